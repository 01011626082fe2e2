"""Any ``nn.Module`` as a subject: the model, its data, its loss, its watched groups and its branch
point are named in a spec's ``[subject]`` section (docs/subjects.md)."""

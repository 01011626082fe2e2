"""Subjects: the models ablate studies, each one package, found through the registry below."""

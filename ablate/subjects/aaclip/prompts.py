"""AA-CLIP's prompt ensemble: 3 normal + 5 abnormal states x 2 templates = 16 prompts per class."""

from __future__ import annotations

NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
TEMPLATES = ("{}.", "a photo of {}.")


def class_prompts(class_name: str) -> tuple[list[str], list[str]]:
    """(normal prompts, abnormal prompts) for one class: 6 and 10 strings."""

    def expand(states: tuple[str, ...]) -> list[str]:
        return [t.format(s.format(class_name)) for s in states for t in TEMPLATES]

    return expand(NORMAL_STATES), expand(ABNORMAL_STATES)

"""Prompt templates: editable files, not strings buried in code.

The built-in set lives in ``longctx/generate/prompts/``: one ``string.Template`` file per request kind
(``$name`` placeholders) plus ``instructions.yaml`` with the small wording pieces (follow-up
phrasing, the diverse question types). Point ``prompts_dir`` at a folder of your own to override
any subset: a file there replaces the built-in file of the same name.

Layout, for a server's prefix cache (vLLM, SGLang): every prompt opens with its source and ends
with its instruction. Every request about one chunk (its summary, chunk and diverse questions,
the judge of their answers) opens with the same block, ``passage.txt``; section and global
requests open with the same block of summaries. Keep that order in templates of your own, or the
server computes each passage again for every request (the dry run reports the reusable share).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

__all__ = ["Prompts", "load_prompts", "TEMPLATE_NAMES"]

TEMPLATE_NAMES = ("system", "passage", "summarize_chunk", "summarize_section", "summarize_global",
                  "question_global", "question_section", "question_chunk", "question_diverse",
                  "question_hierarchical_aware", "judge_qa")


@dataclass(frozen=True)
class Prompts:
    """Loaded templates and wording; :meth:`render` fills one template."""

    templates: dict[str, string.Template]
    instructions: dict
    origin: dict[str, str]  # template name -> file it came from (recorded in the manifest)

    def render(self, name: str, **values: object) -> str:
        try:
            return self.templates[name].substitute(**values).strip()
        except KeyError as err:
            raise KeyError(f"prompt template '{name}' ({self.origin[name]}) uses ${err.args[0]}, "
                           f"which the pipeline does not provide; available: {sorted(values)}") from None

    @property
    def system(self) -> str:
        return self.render("system")

    def diverse_type(self, key: str) -> dict[str, str]:
        try:
            return self.instructions["diverse_types"][key]
        except KeyError:
            raise KeyError(f"diverse question type '{key}' has no entry under diverse_types in "
                           f"{self.origin['instructions']}") from None


def load_prompts(prompts_dir: str | Path | None = None) -> Prompts:
    """Built-in prompts, with any file of ``prompts_dir`` taking precedence."""
    builtin = resources.files("longctx.generate") / "prompts"
    override = Path(prompts_dir) if prompts_dir else None
    if override is not None and not override.is_dir():
        raise FileNotFoundError(f"prompts_dir {override} is not a folder")

    def read(filename: str) -> tuple[str, str]:
        if override is not None and (override / filename).is_file():
            return (override / filename).read_text(encoding="utf-8"), str(override / filename)
        return (builtin / filename).read_text(encoding="utf-8"), f"longctx/generate/prompts/{filename}"

    templates, origin = {}, {}
    for name in TEMPLATE_NAMES:
        text, origin[name] = read(f"{name}.txt")
        templates[name] = string.Template(text)
    text, origin["instructions"] = read("instructions.yaml")
    return Prompts(templates, yaml.safe_load(text), origin)

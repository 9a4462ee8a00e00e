"""The prompts heads are hunted under: ``data/prompts.json`` (two published with the original, three
written for this project), or a file of one's own."""

from pathlib import Path

from headhunt_jax.errors import InputError
from headhunt_jax.files import read_json, read_lines
from headhunt_jax.resources import package_dir

PROMPTS_FILE = package_dir("data") / "prompts.json"


def load_prompts(path: str | Path | None = None) -> tuple[str, ...]:
    """Prompts from a JSON file (``{"prompts": [{"text": ...}, ...]}`` as ``data/prompts.json``,
    or a list of strings) or a text file (one prompt a line); default: the protocol's five."""
    path = Path(path) if path is not None else PROMPTS_FILE
    if path.suffix == ".json":
        record = read_json(path, "a prompts file", kind=(dict, list))
        try:
            items = record["prompts"] if isinstance(record, dict) else record
            prompts = [p["text"] if isinstance(p, dict) else p for p in items]
        except (KeyError, TypeError) as e:
            raise InputError(f"{path}: not a prompts file ({e})") from None
    else:
        lines = read_lines(path, "a prompts file (one prompt a line)")
        prompts = [line.strip() for line in lines if line.strip()]
    if len(prompts) < 2 or not all(isinstance(p, str) and p for p in prompts):
        raise InputError(f"{path}: head hunting needs at least 2 non-empty prompts")
    return tuple(prompts)


# The two prompts published with the original code.
DEFAULT_PROMPTS = load_prompts()[:2]

"""``trackcfg init``: write the commented ``mlflow.yml`` template for this project.

``render_template`` and ``write_template`` are shared with ``kedro trackcfg init``.

A new file never changes the effective configuration: where a configuration file lies below
it (``conf/base/mlflow.yml`` under ``conf/<env>/``, or the user file for ``trackcfg``'s own
loader), every key of the template is written commented out; the values of the template
are the defaults, so where nothing lies below, writing them active changes nothing either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
import click

from trackcfg._discovery import (
    CONFIG_NAMES,
    first_existing,
    project_name,
    root_for,
    user_config_dir,
)

from ._common import display_path

__all__ = ["Written", "render_template", "write_template"]

TEMPLATE_DIR, TEMPLATE_NAME = "templates", "mlflow.yml"


def render_template(
    experiment_name: str, *, layered_over: Sequence[str] = (), kedro_env: bool = False
) -> str:
    """The commented ``mlflow.yml`` template with ``tracking.experiment.name`` filled in.

    ``layered_over``: the files (as shown to the user) whose values this one must not change:
    every key is then commented out, under a note saying why and how to set one (and, for a
    ``conf/<env>/`` file, ``kedro_env``, how Kedro merges it)."""
    from importlib.resources import files
    from io import StringIO

    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class _Representer(RoundTripRepresenter):
        """Writes ``null`` where ruamel would leave a value empty (the file documents it)."""

    _Representer.add_representer(
        type(None),
        lambda rep, _data: rep.represent_scalar("tag:yaml.org,2002:null", "null"),
    )
    text = (files("trackcfg") / TEMPLATE_DIR / TEMPLATE_NAME).read_text(encoding="utf-8")
    yaml = YAML(typ="rt", pure=True)
    yaml.Representer = _Representer
    yaml.preserve_quotes = True
    yaml.width = 4096
    data = yaml.load(text)
    data["tracking"]["experiment"]["name"] = experiment_name
    out = StringIO()
    yaml.dump(data, out)
    text = out.getvalue()
    if not layered_over:
        return text
    first, _, rest = text.partition("\n")
    # "# " before each key line only: deleting those two characters brings the line back.
    keys = "".join(
        f"# {line}" if line.strip() and not line.lstrip().startswith("#") else line
        for line in rest.splitlines(keepends=True)
    )
    below = " and ".join(layered_over)
    note = (
        "#\n"
        f"# This file is layered over {below}: every key below is commented out,\n"
        "# so the values there stay in effect. To change one here, uncomment it and its\n"
        '# section lines (delete the leading "# ").\n'
    )
    if kedro_env:
        note += (
            "# Under `kedro run`, a top-level section set here replaces that whole section of\n"
            "# conf/base (Kedro's default merge): copy the keys of it you want to keep.\n"
        )
    return f"{first}\n{note}{keys}"


@attrs.frozen
class Written:
    """What ``write_template`` wrote: the file, and the files it is layered over."""

    path: Path
    layered_over: tuple[Path, ...] = ()

    def summary(self) -> str:
        """One line: the file (relative to the current folder) and whether its keys are
        active or commented out."""
        where = display_path(self.path)
        if not self.layered_over:
            return f"wrote {where}: every key active, at its default value"
        below = " and ".join(display_path(f) for f in self.layered_over)
        return (
            f"wrote {where}: every key commented out, so {below} keeps its values "
            "(uncomment a key to change it here)"
        )


def write_template(
    folder: Path, env: str, *, force: bool = False, user_file: bool = True
) -> Written:
    """Write the template for the project in ``folder``: into ``conf/<env>/`` when ``folder``
    holds a ``conf/`` folder, else into ``folder``.  Refuses to overwrite unless ``force``.

    Its keys are commented out when a file lies below it: ``conf/base/mlflow.yml`` for
    another environment, and with ``user_file`` (``trackcfg``'s loader reads it; Kedro's
    does not) the user's ``mlflow.yml``."""
    folder = folder.resolve()
    conf = folder / "conf"
    target = conf / env / "mlflow.yml" if conf.is_dir() else folder / "mlflow.yml"
    if target.exists() and not force:
        raise click.ClickException(
            f"{display_path(target)} exists already; not overwritten. "
            "Use --force to replace it with the template."
        )
    below = [first_existing(user_config_dir(), CONFIG_NAMES) if user_file else None]
    base = first_existing(conf / "base", CONFIG_NAMES) if conf.is_dir() and env != "base" else None
    written = Written(target, tuple(f for f in (*below, base) if f is not None))
    # The name a null experiment name stands for, by the loader's rule for this file.
    name = project_name(root_for(folder))
    text = render_template(
        name,
        layered_over=[display_path(f) for f in written.layered_over],
        kedro_env=base is not None,
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {display_path(target)}: {exc.strerror}") from exc
    return written

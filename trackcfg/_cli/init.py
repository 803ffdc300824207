"""``trackcfg init``: write the commented ``mlflow.yml`` template for this project.

``render_template`` and ``write_template`` are shared with ``kedro trackcfg init``.
"""

from __future__ import annotations

from pathlib import Path

import click

from trackcfg._discovery import project_name, root_for

from ._common import display_path, effective_env

__all__ = ["init", "render_template", "write_template"]

TEMPLATE_DIR, TEMPLATE_NAME = "templates", "mlflow.yml"


def render_template(experiment_name: str) -> str:
    """The commented ``mlflow.yml`` template with ``tracking.experiment.name`` filled in."""
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
    return out.getvalue()


def write_template(folder: Path, env: str, *, force: bool = False) -> Path:
    """Write the template for the project in ``folder``: into ``conf/<env>/`` when ``folder``
    holds a ``conf/`` folder, else into ``folder``.  Refuses to overwrite unless ``force``."""
    folder = folder.resolve()
    conf = folder / "conf"
    target = conf / env / "mlflow.yml" if conf.is_dir() else folder / "mlflow.yml"
    if target.exists() and not force:
        raise click.ClickException(
            f"{display_path(target)} exists already; not overwritten. "
            "Use --force to replace it with the template."
        )
    # The name a null experiment name stands for, by the loader's rule for this file.
    name = project_name(root_for(folder))
    text = render_template(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {display_path(target)}: {exc.strerror}") from exc
    return target


@click.command()
@click.option(
    "--env",
    "env",
    metavar="ENV",
    default=None,
    help='With a conf/ folder: write conf/<ENV>/mlflow.yml [default: $TRACKCFG_ENV or "local"].',
)
@click.option("--force", is_flag=True, help="Overwrite an existing mlflow.yml.")
def init(env: str | None, force: bool) -> None:
    """Write a commented mlflow.yml for this project.

    Into conf/<ENV>/ when the current folder holds a conf/ folder (a Kedro project), else
    into the current folder. Every key is written with its default and a comment; the
    experiment name is the project's name. An existing file is kept unless --force.
    """
    cwd = Path.cwd()
    if env is not None and not (cwd / "conf").is_dir():
        click.echo(f"note: no conf/ folder here, --env {env} is not used", err=True)
    target = write_template(cwd, effective_env(env), force=force)
    click.echo(f"wrote {display_path(target)}")
    click.echo("next: edit it, then `trackcfg check` to see whether a run would start")

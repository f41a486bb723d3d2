"""Recipes read as a person reads them: the YAML that YAML reads differently is refused, in one line naming the line.

    from medreason.yamlfile import load_recipe, refuse_yaml11_booleans
    data, booleans = load_recipe(Path("configs/smollm2-135m-cpu.yaml"))
    refuse_yaml11_booleans(path, booleans, classes)      # `eval_strategy: no` -> quote it: eval_strategy: "no"

- A key given twice: PyYAML keeps the last value without a word; here it is an error naming both lines.
- YAML 1.1 booleans: PyYAML reads a plain `no`, `yes`, `on`, `off` as true/false. Where the recipe's field wants
  text (`eval_strategy: no`, `save_strategy: no`, `report_to: none` is fine), the error says how to quote it.
"""

from __future__ import annotations

from pathlib import Path

from medreason.errors import UserError

BOOL_TAG = "tag:yaml.org,2002:bool"


def _loader():
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        """PyYAML's safe loader that refuses a mapping key given twice."""

        def construct_mapping(self, node, deep=False):
            self.flatten_mapping(node)  # `<<: *anchor` merges, as SafeLoader does
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise UserError(
                        f"{self.name} line {line}: key '{key}' is given twice (first on line {seen[key]}); "
                        f"YAML would silently keep the last: keep one"
                    )
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return RecipeLoader


def load_recipe(path: Path) -> tuple[object, dict[str, tuple[str, int]]]:
    """(the recipe's data, {key: (text, line)} of top-level values that YAML 1.1 read as booleans from a word
    other than true/false: `no`, `yes`, `on`, `off`)."""
    import yaml

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    loader = _loader()(text)
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    finally:
        loader.dispose()
    booleans: dict[str, tuple[str, int]] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            values = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for v in values:
                if isinstance(v, yaml.ScalarNode) and v.tag == BOOL_TAG and v.value.lower() not in ("true", "false"):
                    booleans[str(key_node.value)] = (v.value, v.start_mark.line + 1)
    return data, booleans


def refuse_yaml11_booleans(path: Path, booleans: dict[str, tuple[str, int]], classes) -> None:
    """A YAML 1.1 boolean (`no`, `yes`, `on`, `off`) where the field is not a true/false field: refused, with the
    quoting that says what the person meant."""
    import dataclasses
    import typing

    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in booleans and not _takes_bool(hints[f.name]):
                text, line = booleans[f.name]
                raise UserError(
                    f"{path} line {line}: {f.name}: {text} is read by YAML as the boolean {_yaml_bool(text)}, and "
                    f'{f.name} takes text: quote it ({f.name}: "{text}")'
                )


def _takes_bool(kind) -> bool:
    import typing

    if kind is bool:
        return True
    return any(_takes_bool(a) for a in typing.get_args(kind))


def _yaml_bool(text: str) -> str:
    return "true" if text.lower() in ("yes", "on", "y") else "false"

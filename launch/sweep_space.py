"""The search space of s2s-sweep: one file, read once, turned into Optuna distributions
(searching here) or Vertex AI parameter specs (--backend=vertex), so both search one space.

A space file is JSON, or YAML when PyYAML is installed, mapping a config field to its range:

    {"train.learning_rate": {"min": 3e-4, "max": 3e-3, "scale": "log"},
     "model.dropout": {"values": [0.1, 0.2, 0.3]},
     "model.num_encoder_layers": {"min": 2, "max": 6, "type": "int"}}

"values" lists the choices (numbers, strings or booleans); "min" and "max" give a range of
floats, or of integers with "type": "int", on a "linear" (default) or "log" scale. Grid
search needs every field to list its values.
"""

import dataclasses
import itertools
import json
import math
import os

import tensorflow as tf

KEYS = {"values", "min", "max", "type", "scale"}


class SpaceError(ValueError):
    """The space file cannot be used; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str  # config field, e.g. "train.learning_rate" (set as --config.<name>=value)
    values: tuple = ()  # the choices, or () for a range
    low: float | None = None
    high: float | None = None
    integer: bool = False
    log: bool = False

    @property
    def vertex_id(self) -> str:
        """Vertex passes each value as --<id>=value; ids may not hold dots."""
        return self.name.replace(".", "__")


def load_space(path: str) -> list[Parameter]:
    try:
        with tf.io.gfile.GFile(path) as stream:
            text = stream.read()
    except tf.errors.OpError as error:
        raise SpaceError(f"cannot read the space file {path}: {error.message}") from None
    if os.path.splitext(path)[1] in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SpaceError(f"{path}: a YAML space needs PyYAML (pip install pyyaml), or "
                             "write it as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SpaceError(f"{path} is not valid YAML: {error}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpaceError(f"{path} is not valid JSON: line {error.lineno}: "
                             f"{error.msg}") from None
    return parse_space(data, origin=path)


def parse_space(data, *, origin: str) -> list[Parameter]:
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"{origin}: a space maps config fields to ranges, e.g. "
                         '{"train.learning_rate": {"min": 1e-4, "max": 1e-2, "scale": "log"}}')
    return [_parameter(name, spec, origin=origin) for name, spec in data.items()]


def _parameter(name: str, spec, *, origin: str) -> Parameter:
    where = f"{origin}: {name}"
    name = name.removeprefix("config.")
    if not isinstance(spec, dict) or not spec or set(spec) - KEYS:
        raise SpaceError(f"{where}: give either \"values\" or \"min\" and \"max\" (keys: "
                         f"{', '.join(sorted(KEYS))})")
    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values or len(set(map(repr, values))) != len(
                values) or any(isinstance(v, (list, dict)) or v is None for v in values):
            raise SpaceError(f"{where}: \"values\" must be a list of distinct numbers, "
                             "strings or booleans")
        if set(spec) - {"values"}:
            raise SpaceError(f"{where}: \"values\" takes no min, max, type or scale")
        return Parameter(name=name, values=tuple(values))
    if not {"min", "max"} <= set(spec):
        raise SpaceError(f"{where}: a range needs both \"min\" and \"max\"")
    kind, scale = spec.get("type", "float"), spec.get("scale", "linear")
    if kind not in ("float", "int") or scale not in ("linear", "log"):
        raise SpaceError(f"{where}: type is float or int, scale is linear or log")
    low, high = spec["min"], spec["max"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not low < high or (kind == "int" and not all(
            float(v).is_integer() for v in (low, high))):
        raise SpaceError(f"{where}: min and max must be numbers with min < max"
                         + (" (integers)" if kind == "int" else ""))
    if scale == "log" and low <= 0:
        raise SpaceError(f"{where}: a log scale needs min > 0")
    return Parameter(name=name, low=low, high=high, integer=kind == "int", log=scale == "log")


def grid(space: list[Parameter]) -> list[dict]:
    """Every combination of the fields' values, in file order (grid search)."""
    ranges = [p.name for p in space if not p.values]
    if ranges:
        raise SpaceError(f"grid search needs \"values\" for every field; "
                         f"{', '.join(ranges)} give a range")
    return [dict(zip([p.name for p in space], combination))
            for combination in itertools.product(*(p.values for p in space))]


def distributions(space: list[Parameter]) -> dict:
    """{field: optuna distribution}."""
    import optuna
    result = {}
    for p in space:
        if p.values:
            result[p.name] = optuna.distributions.CategoricalDistribution(p.values)
        elif p.integer:
            result[p.name] = optuna.distributions.IntDistribution(int(p.low), int(p.high),
                                                                  log=p.log)
        else:
            result[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
    return result


def vertex_parameters(space: list[Parameter]) -> list[dict]:
    """StudySpec.parameters of a Vertex AI HyperparameterTuningJob (REST JSON)."""
    specs = []
    for p in space:
        spec = {"parameterId": p.vertex_id}
        if p.values and all(_is_number(v) for v in p.values):
            spec["discreteValueSpec"] = {"values": sorted(float(v) for v in p.values)}
        elif p.values:
            spec["categoricalValueSpec"] = {"values": [_flag_value(v) for v in p.values]}
        elif p.integer:
            spec["integerValueSpec"] = {"minValue": str(int(p.low)),
                                        "maxValue": str(int(p.high))}
        else:
            spec["doubleValueSpec"] = {"minValue": float(p.low), "maxValue": float(p.high)}
        if not p.values:
            spec["scaleType"] = "UNIT_LOG_SCALE" if p.log else "UNIT_LINEAR_SCALE"
        specs.append(spec)
    return specs


def config_overrides(params: dict) -> list[str]:
    """The s2s-train flags that set a trial's values."""
    return [f"--config.{name}={_flag_value(value)}" for name, value in params.items()]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _flag_value(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)

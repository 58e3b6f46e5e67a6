"""REST JSON <-> tensors, as TF Serving's util/json_tensor.cc reads and writes them.

- FillPredictRequestFromJson: exactly one of `instances` (row format) and `inputs`
  (columnar), no empty `instances`;
- AddValueToTensor: integer dtypes take only JSON integers (12.0 is refused for uint8),
  in rapidjson's int32/int64 range, not the dtype's; `{"b64": ...}` for any DT_STRING;
- FillTensorProto: ragged lists refused, with the server's messages;
- MakeJsonFromTensors: `predictions` (row) or `outputs` (columnar); floats in their
  shortest round-trip form (WriteDecimal); DT_STRING outputs as text, or as `{"b64": ...}`
  when the output's name ends in `_bytes`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
import tensorflow as tf

from tools.standin.errors import ApiError, invalid

INT32_RANGE = (-(2**31), 2**31 - 1)  # rapidjson IsInt(): what json_tensor.cc takes for int32/uint8
INT64_RANGE = (-(2**63), 2**63 - 1)


# --- JSON -> tensors (json_tensor.cc FillTensorProto / AddValueToTensor).


def json_str(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))[:200]


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_error(value: Any, dtype: tf.DType) -> ApiError:
    return invalid(
        f"JSON Value: {json_str(value)} Type: {_json_type(value)} is not of expected type: "
        f"{dtype.name}"
    )


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf(value: Any, dtype: tf.DType) -> Any:
    if isinstance(value, dict):
        if dtype != tf.string:
            raise _type_error(value, dtype)
        if not _is_b64(value):
            raise invalid(f"JSON Value: {json_str(value)} not formatted correctly for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Unable to base64 decode") from None
    if dtype == tf.string:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode()
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype.is_integer:
        # A JSON integer only: 12.0 is refused. Range is that of rapidjson's IsInt/IsInt64,
        # not the dtype's: uint8 values are carried as int32 and not range-checked.
        low, high = INT64_RANGE if dtype in (tf.int64, tf.uint64) else INT32_RANGE
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype.is_floating:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(value, dtype)
        return value
    raise ApiError(
        "UNIMPLEMENTED", f"Conversion of JSON Value: {json_str(value)} to type: {dtype.name}"
    )


def _dense_shape(value: Any) -> list[int]:
    """json_tensor.cc GetDenseTensorShape: follow the first element of each list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def to_array(value: Any, dtype: tf.DType) -> np.ndarray:
    shape = _dense_shape(value)
    flat: list[Any] = []

    def fill(v: Any, level: int) -> None:
        if not isinstance(v, list):
            if level != len(shape):
                raise invalid(
                    f"JSON Value: {json_str(v)} found at incorrect level: {level + 1} in the "
                    f"JSON DOM. Expected at level: {len(shape)}"
                )
            flat.append(_leaf(v, dtype))
            return
        if level >= len(shape):
            raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(v) != shape[level]:
            raise invalid(
                f"Encountered list at unexpected size: {len(v)} at level: {level} expected size: "
                f"{shape[level]}"
            )
        for item in v:
            fill(item, level + 1)

    fill(value, 0)
    if dtype == tf.string:
        return np.array(flat, dtype=object).reshape(shape)
    # Integers go through int64 then a C-style cast, so 300 becomes 44 as uint8: like
    # the server, which carries uint8 in a TensorProto's int32 `int_val` and does not
    # range-check it. The client is what refuses out-of-range pixels.
    wide = np.array(flat, dtype=np.int64 if dtype.is_integer else np.float64).reshape(shape)
    return wide.astype(dtype.as_numpy_dtype)


def instances_to_arrays(instances: list, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """json_tensor.cc FillTensorMapFromInstancesList: one example per element, batched."""
    names = sorted(specs)
    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    as_objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, item in enumerate(instances):
        if as_objects:
            if not isinstance(item, dict) or _is_b64(item):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            if sorted(item) != names:
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{json_str(item)} keys must be equal to: {','.join(names)}"
                )
            pairs = [(n, item[n]) for n in names]
        else:
            if isinstance(item, dict) and not _is_b64(item):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
            pairs = [(names[0], item)]
        for name, value in pairs:
            try:
                array = to_array(value, specs[name].dtype)
            except ApiError as e:
                raise invalid(
                    f"Failed to process element: {i} key: {name} of 'instances' list. Error: "
                    f"{e.message}"
                ) from None
            if rows[name] and array.shape != rows[name][0].shape:
                raise invalid(
                    f"Expecting shape {list(rows[name][0].shape)} but got: {list(array.shape)}"
                )
            rows[name].append(array)
    return {n: np.stack(rows[n]) for n in names}


def inputs_to_arrays(value: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """json_tensor.cc FillTensorMapFromInputsMap: whole tensors, by name or bare."""
    if not isinstance(value, dict) or _is_b64(value):
        if len(specs) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        (name,) = specs
        return {name: to_array(value, specs[name].dtype)}
    arrays = {}
    for name, spec in sorted(specs.items()):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], spec.dtype)
    return arrays


# --- Tensors -> JSON (json_tensor.cc MakeJsonFromTensors).


def _to_json_values(array: np.ndarray, name: str) -> Any:
    flat = array.ravel()
    if array.dtype == np.float32:
        # WriteDecimal: the shortest decimal that round-trips the float32 (0.1, not
        # 0.10000000149011612); NaN/Infinity as bare tokens, which json.dumps writes too.
        values = [float(str(x)) for x in flat]
    elif array.dtype == object and name.endswith("_bytes"):  # DT_STRING named *_bytes
        values = [{"b64": base64.b64encode(b).decode()} for b in flat]
    elif array.dtype == object:  # other DT_STRING: as text
        values = [b.decode("utf-8", "replace") for b in flat]
    else:
        return array.tolist()
    holder = np.empty(len(values), dtype=object)  # keeps dicts as elements, not arrays
    holder[:] = values
    return holder.reshape(array.shape).tolist()


def outputs_to_json(outputs: dict[str, np.ndarray], columnar: bool) -> dict[str, Any]:
    names = sorted(outputs)
    if columnar:
        if len(names) == 1:
            return {"outputs": _to_json_values(outputs[names[0]], names[0])}
        return {"outputs": {n: _to_json_values(outputs[n], n) for n in names}}
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise invalid(f"Tensor name: {n} has no shape information ")
        if batch is not None and outputs[n].shape[0] != batch:
            raise invalid(
                f"Tensor name: {n} has inconsistent batch size: {outputs[n].shape[0]} "
                f"expecting: {batch}"
            )
        batch = outputs[n].shape[0]
    columns = {n: _to_json_values(outputs[n], n) for n in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(batch or 0)]}


# --- The request body.


def parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        request = json.loads(body)  # accepts NaN/Infinity, like kParseNanAndInfFlag
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"JSON Parse error: {e}") from None
    if not isinstance(request, dict):
        raise invalid(f"JSON Value: {json_str(request)} Is not object")
    return request


def request_to_arrays(
    request: dict[str, Any], specs: dict[str, tf.TensorSpec]
) -> tuple[dict[str, np.ndarray], bool]:
    """FillPredictRequestFromJson: the input arrays, and whether the request was columnar
    (`inputs`), which the response mirrors."""
    has_instances, has_inputs = "instances" in request, "inputs" in request
    if has_instances and has_inputs:
        raise invalid(
            f"JSON Value: {json_str(request)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = request["instances"]
        if not isinstance(instances, list):
            raise invalid(
                f"JSON Value: {json_str(request)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise invalid(f"JSON Value: {json_str(request)} No values in 'instances' array")
        return instances_to_arrays(instances, specs), False
    if has_inputs:
        return inputs_to_arrays(request["inputs"], specs), True
    raise invalid("Missing 'inputs' or 'instances' key")

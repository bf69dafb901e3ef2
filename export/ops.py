"""Which operators a ``.tflite`` file uses, and the rule that they are all TFLite built-ins.

A device runtime (LiteRT, tflite-runtime) has no TensorFlow kernels: a Flex (SELECT_TF_OPS) or
other custom op would load here, next to TensorFlow, and fail on the device.
"""

from __future__ import annotations

from ai_edge_litert import schema_py_generated as schema

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _code(op_code) -> int:
    # Codes above 127 live in `builtinCode`; older files only fill the deprecated int8 field.
    return max(op_code.builtinCode, op_code.deprecatedBuiltinCode)


def list_ops(tflite: bytes) -> list:
    """Sorted operator names; custom ops appear as ``CUSTOM:<name>`` (Flex ops: ``CUSTOM:Flex...``)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    names = set()
    for op_code in model.operatorCodes or []:
        code = _code(op_code)
        if code == schema.BuiltinOperator.CUSTOM:
            custom = op_code.customCode
            names.add(f"CUSTOM:{custom.decode() if isinstance(custom, bytes) else custom}")
        else:
            names.add(_BUILTIN_NAMES.get(code, f"UNKNOWN_{code}"))
    return sorted(names)


def check_builtin_only(tflite: bytes) -> list:
    """The op list, or ValueError naming the custom/Flex ops a device runtime could not run."""
    ops = list_ops(tflite)
    custom = [op for op in ops if op.startswith(("CUSTOM:", "UNKNOWN_"))]
    if custom:
        raise ValueError(f"The converted model must use TFLite built-in ops only. Received: {custom}")
    return ops

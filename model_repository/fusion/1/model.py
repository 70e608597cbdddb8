"""Triton python backend for `fusion`: a thin shell around mediafm.fusion.fuse.

Requests are fused one by one (fusion is a few microseconds per shot); a bad
request gets its own INVALID_ARG error and never fails the others in the batch.
Only a failure its input caused is INVALID_ARG (400: the shots dead-lettered);
out of memory is UNAVAILABLE and anything else INTERNAL, both retried by the
client (mediafm.media.served_encoders.triton_error). Before (2026-12-07), every
failure was INVALID_ARG, so good shots were dead-lettered for a server's fault.
"""

import json

import triton_python_backend_utils as pb_utils

from mediafm.errors import ConfigError
from mediafm.fusion import fuse
from mediafm.media.served_encoders import triton_error
from mediafm.profiles import profile_for_widths


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        out = pb_utils.get_output_config_by_name(config, "FUSED")
        self.out_dtype = pb_utils.triton_string_to_numpy(out["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                v, a, t, p = (pb_utils.get_input_tensor_by_name(request, n).as_numpy()
                              for n in ("VIDEO", "AUDIO", "TEXT", "PRESENT"))
                # Every encoder profile: the request's widths say which one it is.
                layout = profile_for_widths(v.shape[-1], a.shape[-1], t.shape[-1]).layout
                fused = fuse(v, a, t, p, layout=layout)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("FUSED", fused.astype(self.out_dtype))]))
            except Exception as e:  # one bad request must not fail the batch
                responses.append(pb_utils.InferenceResponse(error=triton_error(
                    pb_utils, "fusion", e, input_errors=(ValueError, TypeError, ConfigError))))
        return responses

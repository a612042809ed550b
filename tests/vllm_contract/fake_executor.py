"""A vLLM Executor that runs no model, for the end-to-end contract test on a CPU.

It answers vLLM's engine core the way a GPU worker does (KV cache spec, free memory, one sampled token
per scheduled request, the capture log line after "capture") and reports a ``CUDAGraphStat`` per step
the way vLLM's runners build it: the mode from the resolved ``cudagraph_mode`` (decode mode for a
uniform decode batch, mixed mode otherwise), padded to the next resolved capture size, NONE above the
largest. Everything else is real vLLM: ``EngineArgs``, config resolution, ``LLMEngine``, ``EngineCore``,
the scheduler, the output processor, ``StatLoggerManager`` and the stat classes.
"""

from __future__ import annotations

import bisect
import logging
from concurrent.futures import Future

import torch
from vllm.compilation.cuda_graph import CUDAGraphStat
from vllm.v1.executor.abstract import Executor
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.worker.worker_base import CompilationTimes

CAPTURE = {"seconds": 2.5, "gib": 0.75}   # what the fake logs as its capture total


class FakeWorker:
    def __init__(self, vllm_config):
        self.vllm_config = vllm_config
        self.pending = None
        self.steps = 0

    def __getattr__(self, name):
        # Control-plane calls with nothing to do without a model (reset_mm_cache, ...): no-ops.
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **k: None

    def get_kv_cache_spec(self):
        mc = self.vllm_config.model_config
        return {f"model.layers.{i}.self_attn.attn": FullAttentionSpec(
            block_size=16, num_kv_heads=mc.get_num_kv_heads(self.vllm_config.parallel_config),
            head_size=mc.get_head_size(), dtype=torch.float32) for i in range(mc.get_num_layers(self.vllm_config.parallel_config))}

    def get_supported_kv_cache_layouts(self):
        return ["NHD"]

    def set_kv_cache_layout(self, name, interleave):
        return None

    def determine_available_memory(self):
        return 64 << 20

    def initialize_from_config(self, kv_cache_config):
        return None

    def compile_or_warm_up_model(self):
        from vllm.config import CUDAGraphMode
        if self.vllm_config.compilation_config.cudagraph_mode != CUDAGraphMode.NONE:   # as vLLM's runners do
            logging.getLogger("vllm.v1.worker.gpu.model_runner").info(
                "Graph capturing finished in %.0f secs, took %.2f GiB", CAPTURE["seconds"], CAPTURE["gib"])
        return CompilationTimes(0.0, 0.0)

    def get_supported_tasks(self):
        return ("generate",)

    def _stat(self, so):
        """The CUDAGraphStat vLLM's dispatcher would give this batch under the engine's resolved config."""
        from vllm.config import CUDAGraphMode
        cc = self.vllm_config.compilation_config
        n = so.total_num_scheduled_tokens
        sizes = sorted(cc.cudagraph_capture_sizes or [])
        decode = not so.scheduled_new_reqs and all(k == 1 for k in so.num_scheduled_tokens.values())
        mode = cc.cudagraph_mode.decode_mode() if decode else cc.cudagraph_mode.mixed_mode()
        if mode == CUDAGraphMode.NONE or not sizes or n > sizes[-1]:
            mode, padded = CUDAGraphMode.NONE, n
        else:
            padded = sizes[bisect.bisect_left(sizes, n)]
        return CUDAGraphStat(num_unpadded_tokens=n, num_padded_tokens=padded, num_paddings=padded - n,
                             runtime_mode=str(mode))

    def execute_model(self, so):
        self.pending = so
        return None

    def sample_tokens(self, grammar_output):
        so, self.pending = self.pending, None
        ids = list(so.num_scheduled_tokens)
        self.steps += 1
        return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                 sampled_token_ids=[[7] for _ in ids],
                                 cudagraph_stats=self._stat(so) if so.total_num_scheduled_tokens else None)


class FakeExecutor(Executor):
    uses_ray = False
    supports_pp = False

    def _init_executor(self):
        self.worker = FakeWorker(self.vllm_config)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None, non_block=False):
        fn = getattr(self.worker, method) if isinstance(method, str) else (lambda *a, **k: method(self.worker, *a, **k))
        result = [fn(*args, **(kwargs or {}))]
        if non_block:
            f = Future()
            f.set_result(result)
            return f
        return result

    def execute_model(self, scheduler_output, non_block=False):
        out = self.worker.execute_model(scheduler_output)
        if non_block:
            f = Future()
            f.set_result(out)
            return f
        return out

    def sample_tokens(self, grammar_output, non_block=False):
        out = self.worker.sample_tokens(grammar_output)
        if non_block:
            f = Future()
            f.set_result(out)
            return f
        return out

    def check_health(self):
        return None

    def shutdown(self):
        return None


class AsyncFakeExecutor(FakeExecutor):
    """The same, allowing vLLM's async scheduling (a batch queue of 2, as on a GPU with the default
    uniproc executor): a step's stats arrive with the next ``LLMEngine.step()``."""

    @classmethod
    def supports_async_scheduling(cls) -> bool:
        return True

"""A vLLM Executor that runs no model, for the end-to-end contract test on a CPU.

It answers vLLM's engine core the way a GPU worker does (KV cache spec, free memory, the capture log
line after "capture", one sampled token per scheduled request that reaches the end of its known tokens,
none for a request still in a partial prefill chunk, as the V1 runner discards it) and reports a
``CUDAGraphStat`` per step the way vLLM's runners build it: the mode from the resolved ``cudagraph_mode`` (decode mode for a
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
    def __init__(self, vllm_config, kv_cache_bytes: int = 64 << 20):
        self.vllm_config = vllm_config
        self.kv_cache_bytes = kv_cache_bytes
        self.pending = None
        self.steps = 0
        self.forwards: list[int] = []      # tokens computed by each forward that ran (0-token batches not counted)
        self.sampled: list[int] = []       # tokens each of those forwards returned (sampled, not discarded)
        self.num_tokens: dict[str, int] = {}   # request -> prompt + output tokens known to the runner
        self.resumed = 0                   # requests the scheduler resumed after a preemption

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

    def set_kv_cache_layout(self, name, interleave=None):
        # EngineCore calls it from 0.29 on: (layout_name) on 0.29-0.32, (layout_name,
        # cp_kv_cache_interleave_size) on 0.33; 0.26-0.28 never call it
        return None

    def determine_available_memory(self):
        return self.kv_cache_bytes

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

    def _sampled(self, so) -> dict[str, list[int]]:
        """The tokens each scheduled request gets. The V1 runner samples every request and then clears
        the token of one whose ``num_computed_tokens + scheduled < num_tokens`` (a non-final prefill
        chunk: ``discard_request_mask``, gpu_model_runner.py:2079 and :3728 in 0.26, :3462 in 0.33)."""
        for r in so.finished_req_ids:
            self.num_tokens.pop(r, None)
        computed = {}
        for new in so.scheduled_new_reqs:
            self.num_tokens[new.req_id] = len(new.prompt_token_ids or ())
            computed[new.req_id] = new.num_computed_tokens
        cached = so.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens))
        self.resumed += len(cached.resumed_req_ids)
        out = {}
        for r, n in so.num_scheduled_tokens.items():
            if computed.get(r, 0) + n < self.num_tokens.get(r, 0):
                out[r] = []
            else:
                out[r] = [7]
                self.num_tokens[r] = self.num_tokens.get(r, 0) + 1
        return out

    def sample_tokens(self, grammar_output):
        so, self.pending = self.pending, None
        ids = list(so.num_scheduled_tokens)
        self.steps += 1
        sampled = self._sampled(so)
        if so.total_num_scheduled_tokens:
            self.forwards.append(so.total_num_scheduled_tokens)
            self.sampled.append(sum(len(t) for t in sampled.values()))
        return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                 sampled_token_ids=[sampled[r] for r in ids],
                                 cudagraph_stats=self._stat(so) if so.total_num_scheduled_tokens else None)


class FakeExecutor(Executor):
    uses_ray = False
    supports_pp = False
    kv_cache_bytes = 64 << 20   # what the fake worker reports free for the KV cache

    def _init_executor(self):
        self.worker = FakeWorker(self.vllm_config, self.kv_cache_bytes)

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


class SmallKvFakeExecutor(FakeExecutor):
    """A KV cache of 320 tokens (20 blocks of 16; 512 bytes a token for the tiny Llama), more than one
    max_model_len=256 request needs and less than a few together: vLLM's scheduler preempts requests
    and resumes them later, recomputing their prompt and output."""
    kv_cache_bytes = 320 * 512


class AsyncFakeExecutor(FakeExecutor):
    """The same, allowing vLLM's async scheduling (a batch queue of 2, as on a GPU with the default
    uniproc executor): a step's stats arrive with the next ``LLMEngine.step()``."""

    @classmethod
    def supports_async_scheduling(cls) -> bool:
        return True

"""Callables for `cgwatch check` tests: each broken one breaks a CUDA graph capture in one way, on the line
marked ``# expect: CAUSE`` (``# expect-gpu: CAUSE``: only a real capture shows it). Tests read the marker
with ``expected(name)``, so the asserted line numbers follow edits to this file.

Inputs: ``f32[4,8]`` unless the docstring says otherwise.
"""

import inspect
import itertools
import re

import torch


def expected(name: str) -> tuple[str, int]:
    """(cause, line number) of the marker in the function ``name``."""
    lines, start = inspect.getsourcelines(globals()[name])
    for i, line in enumerate(lines):
        m = re.search(r"# expect(?:-gpu)?: (.+)$", line)
        if m:
            return m.group(1).strip(), start + i
    raise LookupError(f"{name} has no '# expect:' marker")


# -- host syncs ------------------------------------------------------------------------------------
def uses_item(x):
    scale = x.abs().max().item()  # expect: host sync
    return x / scale


def uses_cpu(x):
    total = x.sum(-1).cpu()  # expect: host sync
    return x * 2, total


def uses_tolist(x):
    rows = x[:, 0].tolist()  # expect: host sync
    return x * len(rows)


def prints_tensor(x):
    y = x * 2
    print("y =", y)  # expect: host sync
    return y


def branches_on_tensor(x):
    if x.sum() > 0:  # expect: host sync
        return x * 2
    return x


def uses_float(x):
    return x * float(x.mean())  # expect: host sync


def moves_to_cpu_by_name(x):
    return x.sum(0).to("cpu")  # expect: host sync


# -- data-dependent shapes ---------------------------------------------------------------------------
def uses_nonzero(x):
    idx = x.nonzero()  # expect: data-dependent shape
    return idx.float().sum()


def boolean_mask(x):
    positive = x[x > 0]  # expect: data-dependent shape
    return positive.sum()


def uses_unique(x):
    values = torch.unique(x.round())  # expect: data-dependent shape
    return values.sum()


def where_one_argument(x):
    rows, cols = torch.where(x > 0)  # expect: data-dependent shape
    return rows + cols


def one_hot_without_classes(x):
    return torch.nn.functional.one_hot(x.argmax(-1))  # expect: data-dependent shape


def repeats_by_tensor(x):
    counts = (x[:, 0] > 0).long() + 1
    return x.repeat_interleave(counts, dim=0)  # expect: data-dependent shape


def repeats_with_output_size(x):
    counts = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    return x.repeat_interleave(counts, dim=0, output_size=x.shape[0])


# -- CPU tensors and host data -----------------------------------------------------------------------
def mixes_cpu_tensor(x):
    return x + torch.arange(x.shape[-1]).to(x.device)  # expect: cpu tensor


def assigns_number_by_index(x):
    y = x.clone()
    rows = torch.arange(0, 4, 2, device=x.device)
    y[rows] = 1.0  # expect: cpu tensor
    return y


def builds_tensor(x):
    weights = torch.tensor([float(i) for i in range(x.shape[-1])], device=x.device)  # expect: tensor from host data
    return x * weights


def samples_one_token(x):
    probs = torch.softmax(x, dim=-1)
    return torch.multinomial(probs, 1)  # expect: host sync


def samples_with_replacement(x):
    """Several samples with replacement: the kernel path, no host read in any torch."""
    probs = torch.softmax(x, dim=-1)
    return torch.multinomial(probs, 3, replacement=True)


def samples_without_a_host_read(x):
    """The Gumbel-max form of multinomial(probs, 1): what the lint's hint suggests."""
    probs = torch.softmax(x, dim=-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(-1, keepdim=True)


_calls = itertools.count(1)


def bakes_call_count(x):
    n = next(_calls)                          # Python state, read at capture and frozen into the graph
    offset = torch.full_like(x, float(n))  # expect: python value baked in
    return x + offset


# -- only a real capture shows these -------------------------------------------------------------------
def allocates_too_much_in_capture(x):
    n = 1
    if torch.cuda.is_current_stream_capturing():
        n = 2 * torch.cuda.get_device_properties(x.device).total_memory   # more than the GPU has
    scratch = torch.empty(n, dtype=torch.uint8, device=x.device)  # expect-gpu: out of memory
    return x * 2 + scratch[:1].float()


_side_stream = []


def forks_without_join(x):
    if not _side_stream:
        _side_stream.append(torch.cuda.Stream())   # made on the first (eager) call, not during capture
    side = _side_stream[0]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = x * 2  # expect-gpu: unjoined side-stream work
    return x + 1, y                                 # never joined back: torch.cuda.current_stream().wait_stream(side)


# -- correct ---------------------------------------------------------------------------------------
def rms_scale(x):
    h = x.float()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * 2


def rms_scale_with_ids(x, ids):
    """Inputs: f16[4,8], i64[4]@0:100."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    return {"scores": h.sum(-1) + ids, "ids": ids * 2}


def example_inputs():
    """An INPUTS_FUNC: the inputs of rms_scale_with_ids."""
    return torch.randn(4, 8, dtype=torch.float16), torch.randint(0, 100, (4,))


not_callable = 42

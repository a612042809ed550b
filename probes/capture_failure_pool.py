"""Why the engine moves to a fresh pool after a failed capture (H100, torch 2.11, 2026-11-27).

A capture that fails (here: a host sync inside it) makes torch's capture_end raise before it ends the
allocators' recording into the pool; ending the device allocator's recording by hand is not enough,
and every later capture into the same pool fails with "beginAllocateToPool: already recording to
mempool_id". Run on a GPU: python3 probes/capture_failure_pool.py
"""
import torch
dev = torch.cuda.current_device()
pool = torch.cuda.graph_pool_handle()
s = torch.cuda.Stream()
x = torch.ones(4, device="cuda")
def attempt(fail, mode):
    g = torch.cuda.CUDAGraph(keep_graph=True)
    prev = torch.cuda.current_stream()
    s.wait_stream(prev)
    try:
        with torch.cuda.stream(s):
            g.capture_begin(pool=pool, capture_error_mode=mode)
            try:
                y = x * 2
                if fail:
                    y.sum().item()
            except Exception as e:
                print("  body raised:", type(e).__name__, str(e).splitlines()[0])
                raise
            finally:
                try:
                    g.capture_end()
                    print("  capture_end ok")
                except Exception as e:
                    print("  capture_end raised:", type(e).__name__, str(e).splitlines()[0])
                    for k in range(5):
                        try:
                            torch._C._cuda_endAllocateToPool(dev, pool)
                            print("  endAllocateToPool ok", k)
                        except Exception as e2:
                            print("  endAllocateToPool raised:", k, type(e2).__name__, str(e2).splitlines()[0])
                            break
                    raise
    except Exception as e:
        print(" attempt failed:", type(e).__name__, str(e).splitlines()[0])
    finally:
        prev.wait_stream(s)
    torch.cuda.synchronize()
for mode in ("thread_local", "global"):
    print(mode)
    attempt(True, mode)
    attempt(False, mode)

"""TP=2 and DP=2 on 2 gloo processes against a single process (the debug model)."""

from __future__ import annotations

import torch

from echo_nemo.distributed import run_distributed

VOCAB = 256
SEQ = 32


def _batch(n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, VOCAB, (n, SEQ + 1), generator=g)


def _loss_and_grads(tp: int, out_path: str, split: str = "") -> None:
    """One forward/backward of the debug model; saves loss and full (TP=1 layout) grads."""
    import torch.distributed as dist

    from echo_nemo import distributed as d
    from echo_nemo import parallel as P
    from echo_nemo.model.build import ModelConfig, build_gpt
    from echo_nemo.model.forward import causal_forward

    d.init_distributed(tp=tp, seed=1234)
    model = build_gpt(ModelConfig(scale="debug", seq_length=SEQ), vocab_size=VOCAB)
    batch = _batch()
    if split == "dp":  # each DP rank takes its contiguous half of the global batch
        per = batch.shape[0] // d.dp_size()
        batch = batch[d.dp_rank() * per : (d.dp_rank() + 1) * per]
    loss = causal_forward(model, batch[:, :-1], labels=batch[:, 1:]).mean()
    loss.backward()
    P.average_gradients(list(model.parameters()))
    grads = {n: P.gather_tp_param(p.grad, p) for n, p in model.named_parameters()}
    global_loss = loss.detach().clone()
    if d.dp_size() > 1:
        from megatron.core import parallel_state as ps

        dist.all_reduce(global_loss, group=ps.get_data_parallel_group())
        global_loss /= d.dp_size()
    if dist.get_rank() == 0:
        torch.save({"loss": global_loss, "grads": grads}, out_path)


def test_tp2_matches_tp1(tmp_path):
    run_distributed(_loss_and_grads, 1, 1, str(tmp_path / "tp1.pt"))
    run_distributed(_loss_and_grads, 2, 2, str(tmp_path / "tp2.pt"))
    ref, tp2 = torch.load(tmp_path / "tp1.pt"), torch.load(tmp_path / "tp2.pt")
    assert abs(ref["loss"].item() - tp2["loss"].item()) <= 1e-5
    assert ref["grads"].keys() == tp2["grads"].keys()
    for name, g in ref["grads"].items():
        assert g.shape == tp2["grads"][name].shape, name
        torch.testing.assert_close(tp2["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    # the comparison is not vacuous: gradients are non-zero everywhere it matters
    assert all(g.abs().sum() > 0 for g in ref["grads"].values())


def test_dp2_matches_one_process_on_the_whole_batch(tmp_path):
    run_distributed(_loss_and_grads, 1, 1, str(tmp_path / "one.pt"))
    run_distributed(_loss_and_grads, 2, 1, str(tmp_path / "dp2.pt"), "dp")
    ref, dp2 = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "dp2.pt")
    assert abs(ref["loss"].item() - dp2["loss"].item()) <= 1e-5
    for name, g in ref["grads"].items():
        torch.testing.assert_close(dp2["grads"][name], g, atol=1e-6, rtol=1e-4, msg=name)


def _write_world(out: str) -> None:
    from echo_nemo.distributed import init_distributed

    init_distributed(tp=1, seed=0)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        open(out, "w").write(str(dist.get_world_size()))


def test_a_port_taken_before_rank_0_listens_is_replaced(tmp_path, monkeypatch):
    """free_port() can hand out a port another process takes a moment later (parallel
    tests): run_distributed then retries on a fresh port instead of failing."""
    import socket

    import echo_nemo.distributed as D

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]
    real = D.free_port
    monkeypatch.setattr(D, "free_port", lambda: ports.pop() if ports else real())
    try:
        # one rank is enough: rank 0 is the one that listens on the port
        run_distributed(_write_world, 1, str(tmp_path / "world"))
    finally:
        taken.close()
    assert (tmp_path / "world").read_text() == "1" and ports == []

"""The written-out Llama-family forward pass (SlotDecoder) computes what transformers' does, for
Llama with grouped KV heads and for Qwen2 with q/k/v biases, through prefill, steps, rows leaving
(the last rows move into their slots) and rows joining; other architectures get transformers'."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hkllm.serve.aoti import Program
from hkllm.serve.decoders import PaddedDecoder, SlotDecoder, calibrate_threads, make_decoder, slot_decoder_unfit


def tiny(kind: str, layers: int = 2):
    torch.manual_seed(0)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=kind == "llama-tied")).eval()
    return model


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    """transformers' logits for the next token after `ids`, from scratch (no cache)."""
    with torch.inference_mode():
        return model(torch.tensor([ids]), use_cache=False).logits[0, -1].float()


@pytest.mark.parametrize("kind", ["llama", "llama-tied", "qwen2"])
def test_slots_match_transformers_through_leaving_and_joining_rows(kind):
    model = tiny(kind)
    decoder = make_decoder(model, max_batch=8, pad_id=0)
    assert isinstance(decoder, SlotDecoder)
    rows = [[3, 4, 5], [7] * 9, [11, 12], [20, 21, 22, 23, 24]]
    with torch.inference_mode():
        logits = decoder.prefill(rows)
        for step in range(8):
            for r, ids in enumerate(rows):
                assert torch.allclose(logits[r], reference_logits(model, ids), atol=1e-4), (kind, step, r)
            nxt = logits.argmax(-1)
            for r, t in enumerate(nxt.tolist()):
                rows[r] = rows[r] + [t]
            if step == 2:                      # rows 0 and 2 finish: the last row moves into slot 0
                order = decoder.keep([1, 3])
                rows = [rows[i] for i in order]
                nxt = nxt[torch.tensor(order)]
                assert sorted(order) == [1, 3] and decoder.rows == 2
            logits = decoder.step(nxt)
            if step == 4:                      # a new request joins a batch already decoding
                rows.append([9, 8, 7, 6])
                logits = torch.cat([logits, decoder.prefill([rows[-1]])])


def test_transformers_forward_is_still_right_after_weights_become_views():
    """The engine's prompt scoring uses the model itself, whose weights now view the fused [in, out] tensors."""
    model = tiny("qwen2")
    before = reference_logits(model, [5, 6, 7, 8])
    SlotDecoder(model, max_batch=2)
    assert torch.allclose(reference_logits(model, [5, 6, 7, 8]), before, atol=1e-5)


def test_other_architectures_and_a_sliding_window_use_transformers():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    assert "qwen3" in slot_decoder_unfit(qwen3)
    assert isinstance(make_decoder(qwen3, 4, 0), PaddedDecoder)
    windowed = tiny("qwen2")
    windowed.config.use_sliding_window, windowed.config.sliding_window = True, 16
    assert "sliding" in slot_decoder_unfit(windowed)
    assert isinstance(make_decoder(tiny("llama"), 4, 0, "transformers"), PaddedDecoder)
    with pytest.raises(ValueError):
        make_decoder(tiny("llama"), 4, 0, "fast")


def test_padded_decoder_matches_transformers_after_transposing_its_weights():
    model = tiny("llama-tied")
    decoder = PaddedDecoder(model, pad_id=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    rows = [[3, 4, 5], [7] * 6]
    with torch.inference_mode():
        logits = decoder.prefill(rows)
        for r, ids in enumerate(rows):
            assert torch.allclose(logits[r], reference_logits(model, ids), atol=1e-4)


@pytest.mark.parametrize("kind", ["llama-tied", "qwen2"])
def test_bf16_slots_match_fp32_transformers_with_and_without_onednn_weights(kind):
    """In bf16 the matrices go through oneDNN's reordered copies where this CPU computes bf16 in
    oneDNN (decoders._onednn_packed); either way the logits are fp32 transformers' within bf16's
    rounding, through prefill and steps."""
    reference = tiny(kind)
    model = tiny(kind).to(torch.bfloat16)
    decoder = SlotDecoder(model, max_batch=4)
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert len(decoder._packed) == 1 + 4 * len(decoder.layers) and "oneDNN" in decoder.name
    rows = [[3, 4, 5], [7] * 9]
    for packed in (decoder._packed, {}):
        decoder._packed = packed
        decoder.reset()
        with torch.inference_mode():
            logits = decoder.prefill(rows)
            for _ in range(3):
                for r, ids in enumerate(rows):
                    want = reference_logits(reference, ids)
                    assert (logits[r] - want).abs().max() < 0.05 * max(1.0, float(want.abs().max())), (kind, bool(packed))
                nxt = logits.argmax(-1)
                rows = [ids + [int(t)] for ids, t in zip(rows, nxt)]
                logits = decoder.step(nxt)


def test_trial_steps_run_over_a_prefilled_scratch_table_and_leave_the_live_rows_alone():
    """The compile check and timings step over a table an eager prefill filled (in-range
    activations; random keys and values made bf16 steps differ by logits, decoders.py), while the
    live rows go on being served beside them."""
    model = tiny("llama")
    decoder = SlotDecoder(model, max_batch=8)
    with torch.inference_mode():
        decoder.prefill([[3, 4, 5], [7] * 6])
    live = (decoder.rows, decoder.longest, decoder.lengths.clone(), decoder.kv, decoder.kv.clone())
    ids, lengths, span, kv = decoder._trial_inputs(3)
    assert (decoder.rows, decoder.longest) == live[:2] and torch.equal(decoder.lengths, live[2])
    assert decoder.kv is live[3] and torch.equal(decoder.kv, live[4]) and kv is not decoder.kv
    assert lengths.tolist() == [12, 11, 10] and len(span) == 13 and kv.shape[2] >= 4 and kv.shape[4] >= 14
    # Row 0's keys are those of its prompt (a prefill's), zeros past it; the step over them runs.
    assert kv[:, :, 0, :, :12].abs().sum() > 0 and kv[:, :, 0, :, 12:].abs().sum() == 0
    with torch.inference_mode():
        assert decoder._decode_step(*decoder._trial_inputs(3)).shape == (3, 300)


def test_thread_calibration_picks_a_count_it_may_use():
    decoder = SlotDecoder(tiny("llama"), max_batch=8)
    before = torch.get_num_threads()
    threads = calibrate_threads(decoder, cores=2, max_batch=8, steps=2)
    assert threads == {"small": 1, "large": 1}      # a light model leaves a core to HTTP at every batch size
    assert torch.get_num_threads() == before and decoder.rows == 0


def test_thread_calibration_leaves_the_http_thread_a_core_unless_steps_are_long(monkeypatch):
    """Here a second thread halves a step of several rows. A light model (1 ms steps) still gets one
    thread: the HTTP thread runs beside the step (the compiled one releases the GIL) and needs the
    other core. A heavy one (50 ms a row) takes both, but only where they pay: not at one row when
    the second thread gains nothing there, yet where it gains 15% (SmolLM2: ~50 -> ~42 ms)."""
    from hkllm.serve import decoders

    decoder = SlotDecoder(tiny("llama"), max_batch=8)
    for row_s, one_row_gain, expected in ((0.001, 2.0, {"small": 1, "large": 1}),
                                          (0.05, 2.0, {"small": 2, "large": 2}),
                                          (0.05, 1.0, {"small": 1, "large": 2}),
                                          (0.05, 1.15, {"small": 2, "large": 2})):
        def seconds(decoder, rows, steps, row_s=row_s, gain=one_row_gain):
            two = torch.get_num_threads() == 2
            return row_s * rows / ((2.0 if rows > 1 else gain) if two else 1.0)
        monkeypatch.setattr(decoders, "step_seconds", seconds)
        assert calibrate_threads(decoder, cores=2, max_batch=8) == expected, (row_s, one_row_gain)
        assert calibrate_threads(decoder, cores=1, max_batch=8) == {"small": 1, "large": 1}


def test_compiled_step_matches_eager_and_compiles_nothing_while_serving(tmp_path, monkeypatch):
    """`compile` builds one program up front: rows joining up to max_batch, leaving down to one, and
    lengths past the cache's doublings must all run it (a compile mid-serving stalls every user for
    seconds) and give the eager step's logits. A second decoder of the same weights loads it from
    the disk cache instead of compiling."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("HKLLM_CACHE_DIR", str(tmp_path))
    eager = make_decoder(tiny("qwen2", layers=1), max_batch=5, pad_id=0)     # one layer: half the compile time
    compiled = make_decoder(tiny("qwen2", layers=1), max_batch=5, pad_id=0)
    # (where_faster=False: used at every size whatever this machine's timing says, as a test must)
    assert compiled.compile({"small": 1, "large": 1}, where_faster=False) is None and compiled.name == "slots, compiled"
    assert len(list((tmp_path / "aoti").glob("step-*.pt2"))) == 1
    calls = []
    runner = compiled._runners[1]
    assert isinstance(runner, Program), "called through its C ABI, the GIL released (aoti.py)"
    compiled._runners[1] = lambda *a: calls.append(1) or runner(*a)
    graphs = counters["stats"]["unique_graphs"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)                    # as the engine does for every batch size here (restored below:
    schedule = {0: ("join", [[3, 4, 5]]), 10: ("join", [[7] * 9, [1, 2]]), 20: ("join", [[5] * 30, [6, 6]]),
                40: ("keep", [0, 2, 4]), 50: ("keep", [1]), 60: ("join", [[8, 9]] * 4), 90: ("keep", [3])}
    try:                                        # a leaked count changes every later test's arithmetic)
        with torch.inference_mode():
            logits = {}
            for step in range(200):
                for name, d in (("eager", eager), ("compiled", compiled)):
                    action, arg = schedule.get(step, (None, None))
                    nxt = logits[name].argmax(-1) if name in logits else None
                    if action == "keep":
                        order = d.keep(arg)
                        nxt = nxt[torch.tensor(order)]
                    out = d.step(nxt) if nxt is not None and len(nxt) else torch.zeros(0, 300)
                    if action == "join":
                        out = torch.cat([out, d.prefill(arg)])
                    logits[name] = out
                assert torch.allclose(logits["compiled"], logits["eager"], atol=1e-4), step
    finally:
        torch.set_num_threads(before)
    assert int(compiled.lengths.max()) > 128                       # past two doublings of the 64-position slots
    assert len(calls) == 199, "every step ran the compiled program"     # step 0 only prefills
    assert counters["stats"]["unique_graphs"] == graphs, "a graph was compiled while serving"

    def no_compiling(*a, **k):
        raise AssertionError("compiled again although the program is cached")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiling)
    again = make_decoder(tiny("qwen2", layers=1), max_batch=5, pad_id=0)
    assert again.compile({"small": 1, "large": 1}, where_faster=False) is None
    # Where the program measured slower (SmolLM2 at 8 rows), batches of that size step eagerly.
    calls.clear()
    compiled._use_compiled = {"small": True, "large": False}
    with torch.inference_mode():
        compiled.reset()
        compiled.prefill([[1, 2]] * 3)
        three = compiled.step(torch.tensor([3, 4, 5]))
        compiled.keep([0])
        one = compiled.step(torch.tensor([6]))
    assert len(calls) == 1 and three.shape == (3, 300) and one.shape == (1, 300)


def test_bf16_compiled_step_runs_onednn_matmuls_and_matches_the_eager_step(tmp_path, monkeypatch):
    """In bf16 the program is compiled with inductor's freezing: where this CPU computes bf16 in
    oneDNN, its matmuls are oneDNN's over reordered weights (its own bf16 loops made SmolLM2's step
    slower than eager), and its logits stay the eager step's within bf16 rounding."""
    import zipfile

    monkeypatch.setenv("HKLLM_CACHE_DIR", str(tmp_path))
    decoder = make_decoder(tiny("llama", layers=1).to(torch.bfloat16), max_batch=4, pad_id=0)
    assert decoder.compile({"small": 1, "large": 1}, where_faster=False) is None
    (package,) = (tmp_path / "aoti").glob("step-*.pt2")
    wrapper = "".join(zipfile.ZipFile(package).read(n).decode(errors="replace")
                      for n in zipfile.ZipFile(package).namelist() if n.endswith("wrapper.cpp"))
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert wrapper.count("linear_pointwise") >= 5        # q·k·v, o, gate·up, down, and the output layer
    with torch.inference_mode():
        inputs = decoder._trial_inputs(3)
        want, got = decoder._decode_step(*inputs), decoder._runners[1](*inputs)
    assert got.dtype == torch.float32 and (got - want).abs().max() < 0.05 * max(1.0, float(want.abs().max()))

"""The analysis scripts' own claims, on tiny float64 models (no data, no checkpoints)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from vssm.model.autoregressive import ARSSM, ARSSMConfig

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_ar(seed: int = 0) -> ARSSM:
    torch.manual_seed(seed)
    return ARSSM(ARSSMConfig(vocab_size=3, width=8, state_size=4, layers=2)).double().eval()


@torch.no_grad()
def test_posterior_uniforms_decode_to_the_real_tokens_in_one_pass_from_the_real_context():
    jd, model = _script("jacobi_depth"), _tiny_ar()
    x = torch.randint(0, 3, (5, 40))
    u = jd.posterior_uniforms(model, x, torch.Generator().manual_seed(1))
    assert ((u > 0) & (u < 1)).all()
    assert torch.equal(jd.jacobi_pass(model, x, u), x)


@torch.no_grad()
def test_fixed_point_decoding_is_exact_up_to_pass_k_and_ends_at_the_sequential_sample():
    jd, model = _script("jacobi_depth"), _tiny_ar(1)
    N, T = 6, 30
    x = torch.randint(0, 3, (N, T))
    out = jd.measure(model, x, max_passes=T + 1, report=[1, 5, T], seed=3)
    prior = out["prior_latents"]
    assert prior["converged_fraction"] == 1.0 and prior["equals_sequential_sample"] == 1.0
    assert 0 < prior["passes_max"] <= T
    # from the real tokens' posterior latents, T passes always rebuild the real tokens
    assert out["posterior_latents"][T]["exact_fraction"] == 1.0
    # and pass k is right on the first k tokens whatever the start
    u = jd.posterior_uniforms(model, x, torch.Generator().manual_seed(2))
    xk = torch.ones_like(x)
    for k in range(1, 6):
        xk = jd.jacobi_pass(model, xk, u)
        assert torch.equal(xk[:, :k], x[:, :k])


@torch.no_grad()
def test_passes_to_fixed_point_counts_the_first_pass_that_reached_it():
    jd, model = _script("jacobi_depth"), _tiny_ar(2)
    u = torch.rand(8, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fixed, passes = jd.passes_to_fixed_point(model, u, max_passes=26)
    iterates = [torch.zeros(8, 25, dtype=torch.long)]
    for _ in range(26):
        iterates.append(jd.jacobi_pass(model, iterates[-1], u))
    for row in range(8):
        first = min(k for k in range(27) if all(torch.equal(it[row], fixed[row]) for it in iterates[k:]))
        assert passes[row] == first
    assert (passes > 1).any()  # the tiny model's rows do not all settle at once


@torch.no_grad()
def test_block_fixed_point_sampling_is_the_sequential_sample_at_every_block_size():
    jd, model = _script("jacobi_depth"), _tiny_ar(3)
    for p in model.parameters():  # sharpened: the context must matter, or a sampler that drops it would pass
        if p.ndim == 2:
            p.mul_(3.0)
    T = 23
    x, passes = jd.block_fixed_point(model, T, 1, 5)
    assert passes == 2 * T - int((x == 0).sum())  # a block of one: one pass if the zero guess holds, else two
    for c in (1, 4, 7, T, 40):
        for seed in (0, 5):
            x, passes = jd.block_fixed_point(model, T, c, seed)
            ref, _ = model.generate(model.start(torch.zeros(1, 0, dtype=torch.long), seed), T, resumable=False)
            assert torch.equal(x, ref)
            blocks = -(-T // c)
            assert blocks <= passes <= T + blocks  # a pass per block at least, one per token plus a check at most
    x, _ = jd.block_fixed_point(model, T, 4, [0, 5, 9])  # a batch: every row its own sample
    ref, _ = model.generate(model.start(torch.zeros(3, 0, dtype=torch.long), [0, 5, 9]), T, resumable=False)
    assert torch.equal(x, ref)
    out = jd.blocks_measure(model, T, [4], seeds=2, batch=3)
    assert out["blocks"][4]["passes_median"] >= 6 and out["blocks"][4]["sequential_seconds_median"] > 0
    assert out["blocks"][4]["batch_3"]["passes"] >= out["blocks"][4]["passes_median"]


def test_the_results_page_is_written_from_the_eval_jsons_and_is_fresh():
    """docs/results.md holds no hand-typed number: regenerating it from checkpoints/*.json changes nothing."""
    results_page = _script("results_page")
    text = results_page.render(ROOT / "checkpoints", ROOT / "docs" / "benchmarks-blocks.json", ROOT / "docs" / "img")
    assert (ROOT / "docs" / "results.md").read_text() == text, "run scripts/results_page.py"
    for name in (p.stem for p in (ROOT / "checkpoints").glob("*.safetensors")):
        assert f"`{name}`" in text  # every bundled model has its row


def _row(c: int, length: int, seconds: float, samples: dict | None = None) -> dict:
    row = {
        "block_size": c,
        "sequences": 2,
        "nll": {"bound": "iw", "samples": 2, "nats_per_sequence": 500.0 + c, "bits_per_token": 3.0 + c / 1000},
        "generation_seconds": {"length": length, "batch_1": seconds, "batch_32": 10 * seconds},
    }
    return {**row, "samples": samples} if samples else row


def test_the_results_page_names_the_cpu_its_times_come_from_only_when_one_took_them_all():
    results_page = _script("results_page")
    host = {"cpu": "AMD EPYC", "cpu_id": "family 25 model 1", "kernel_vector_bits": 256, "threads": 1}
    one = {"a": {"timing": {"machine": host}}, "b": {"timing": {"machine": dict(host)}}}
    assert results_page._timed_on(one) == ", on AMD EPYC (family 25 model 1) with 256-bit kernels, one thread"
    other = {**one, "c": {"timing": {"machine": {**host, "cpu_id": "family 25 model 17"}}}}
    assert results_page._timed_on(other) == ""  # two hosts: the sentence would be wrong for some rows
    assert results_page._timed_on({**one, "c": {}}) == ""  # a JSON that does not say (an older eval)
    bare = {"a": {"timing": {"machine": {"cpu": "x", "cpu_id": "", "kernel_vector_bits": 0, "threads": 2}}}}
    assert results_page._timed_on(bare) == ", on x, 2 threads"


def test_a_text_curve_gets_text_columns_its_own_times_and_every_model_s_judged_samples(tmp_path):
    """Text rows show known words and the AR judge's bits per byte; the benchmark's block part (MNIST's
    784-token shapes) never lends its times to 256-byte rows; a VSSM served in one pass is judged at
    its whole-length row, an AR baseline at its only row, beside the test windows."""
    results_page = _script("results_page")
    words = {"samples": 3, "words": 10, "known_word_share": 0.25, "ar_judge_bits_per_byte": 4.5}
    vssm = {
        "family": "vssm",
        "default_block_size": None,
        "parameters": {"generation": 10},
        "nll": {"bound": "iw", "samples": 8, "bits_per_token": 3.9},
        "test": {"sequences": 2},
        "generation_seconds": {"length": 256, "batch_1": 0.004, "batch_32": 0.05},
        "block_curve": [_row(4, 256, 0.07, words), _row(256, 256, 0.004, {**words, "known_word_share": 0.5})],
        "judged_test_sequences": {"offset": 0, **words, "known_word_share": 0.9, "ar_judge_bits_per_byte": 2.7},
    }
    ar = {
        "family": "ar-ssm",
        "parameters": {"generation": 10},
        "nll": {"bound": "exact", "bits_per_token": 2.7},
        "test": {"sequences": 2},
        "generation_seconds": {"length": 256, "batch_1": 0.04, "batch_32": 0.4},
        "block_curve": [_row(1, 256, 0.04, {**words, "known_word_share": 0.8})],
    }
    mnist_bench = {"machine": {"load_average_start": [0.1]}, "blocks": {"length": 784, "sequence": {
        "1": {"seconds": {"vssm:4": {"median_s": 123.0}}}}}}  # fmt: skip
    page = "\n".join(
        results_page.dataset_section("shakespeare", {"t-ar": ar, "t-vssm": vssm}, mnist_bench, tmp_path, tmp_path)
    )
    assert "| known words | AR judge (bits per byte) |" in page
    assert "| 4 | 3.004 | 70.0 | 700.0 | 25% | 4.50 |" in page  # the eval's own times, not the benchmark's
    assert "123,000" not in page
    assert "`t-ar`: the block-size dial" not in page  # an AR model's one row is not a dial
    assert "| test windows (3) | - | - | 90% | 2.70 |" in page
    assert "| `t-vssm` | one pass | 1 | 50% | 4.50 |" in page
    assert "| `t-ar` | token by token | 1 | 80% | 4.50 |" in page


@torch.no_grad()
def test_block_bounds_are_the_model_s_bound_whatever_the_batching():
    """The comparison script's IW column is ``VSSM.nll`` at the block size (keyed draws: batching
    cannot move it), and its ELBO split has a KL that is never negative."""
    from tests.conftest import tiny_model

    block_bounds = _script("block_bounds")
    m = tiny_model("vssm", max_position=12, decoder_tokens=True, posterior="smoothing")
    x = torch.randint(0, 4, (6, 12), generator=torch.Generator().manual_seed(2))
    one = block_bounds.bounds(m, x, 4, samples=3, batch=6)
    split = block_bounds.bounds(m, x, 4, samples=3, batch=2)
    assert abs(one["iw"] - split["iw"]) < 1e-9
    assert abs(one["iw"] - float(m.nll(x, samples=3, block_size=4).mean())) < 1e-9
    assert one["kl"] >= 0.0 and one["rec"] > 0.0


def test_the_observation_temperature_rule_serves_the_best_smallest_margin():
    choose = _script("observation_temperature").choose
    rows = [
        {"observation_temperature": 0.4, "smallest_margin": 0.97, "ar_judge_margin": 1.4},  # confident, lopsided
        {"observation_temperature": 0.5, "smallest_margin": 1.02, "ar_judge_margin": 1.3},
        {"observation_temperature": 0.6, "smallest_margin": 1.02, "ar_judge_margin": 1.2},  # a tie: the lower
        {"observation_temperature": 0.7, "smallest_margin": 0.95, "ar_judge_margin": 1.1},
        {"observation_temperature": 1.0, "smallest_margin": 1.10, "ar_judge_margin": 0.9},  # misses the AR judge
    ]
    assert choose(rows) == 0.5
    assert choose(rows[2:]) == 0.6
    assert choose(rows[4:]) is None


def test_a_sequence_length_takes_its_times_from_the_benchmark_part_that_timed_it(tmp_path):
    """The block part times MNIST's 784 tokens and the text models' 256 bytes: a curve of either length
    takes that part's times, and only for a checkpoint of the shapes that part timed."""
    import dataclasses

    from tests.conftest import tiny_model
    from vssm.model.checkpoint import save_checkpoint

    pareto = _script("pareto")
    text_vssm = tiny_model("vssm", vocab_size=256, max_position=None)
    path = save_checkpoint(text_vssm, tmp_path / "t.safetensors")
    text = {"length": 256, "vssm_config": dataclasses.asdict(text_vssm.config), "sequence": {
        "1": {"seconds": {"vssm:16": {"median_s": 0.5}, "ar:ar-ssm": {"median_s": 2.0}}}}}  # fmt: skip
    bench = {"blocks": {"length": 784, "vssm_config": {"vocab_size": 2}, "sequence": {}, "text": text}}
    assert pareto.bench_section(bench, 256) is text and pareto.bench_section(bench, 784) is bench["blocks"]
    assert pareto.bench_section(bench, 100) is None
    assert pareto.timed_by_bench(bench, path, 256) and not pareto.timed_by_bench(bench, path, 784)
    assert pareto.bench_times(bench, "1", 256) == {"vssm:16": 0.5, "ar:ar-ssm": 2.0}
    assert pareto.bench_times(bench, "32", 256) == {}
    # an MNIST VSSM served at a block size besides the curve's model: its own part of the same length
    image_vssm = tiny_model("vssm", vocab_size=2, max_position=784)
    image_path = save_checkpoint(image_vssm, tmp_path / "i.safetensors")
    image = {"length": 784, "vssm_config": dataclasses.asdict(image_vssm.config), "sequence": {
        "1": {"seconds": {"vssm:28": {"median_s": 0.25}, "ar:ar-ssm": {"median_s": 2.0}}}}}  # fmt: skip
    bench["blocks"]["images"] = {"i": image}
    assert pareto.bench_section(bench, 784) is bench["blocks"]  # no checkpoint: the curve's part
    assert pareto.bench_section(bench, 784, image_path) is image and pareto.timed_by_bench(bench, image_path, 784)
    assert pareto.bench_times(bench, "1", 784, image_path) == {"vssm:28": 0.25, "ar:ar-ssm": 2.0}

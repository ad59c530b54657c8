"""Velocity and offset heads (train/model/expressive.py): losses on hit cells only, the
incremental path equal to the teacher-forced one, MIDI values in range."""
import numpy as np
import torch

from train.model.expressive import add_expressive_loss, expressive_terms, to_midi_values
from train.model import HierarchicalDrumModel, upgrade

torch.set_num_threads(1)  # tiny models on a shared 2-core machine: threads only contend

D, L = 9, 64


def _batch(seed=0, B=3):
    g = torch.Generator().manual_seed(seed)
    step = (torch.rand(B, L, D, generator=g) < 0.3).float()
    vel = (step * torch.randint(1, 128, (B, L, D), generator=g)).to(torch.uint8)
    off = (step * torch.randint(-64, 65, (B, L, D), generator=g)).to(torch.int8)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 50:] = False
    return {"step": step, "velocity": vel, "offset": off, "mask": mask}


def _model(**kw):
    torch.manual_seed(0)
    return HierarchicalDrumModel.from_config(dict(
        num_drums=D, step_hidden_dim=32, bar_hidden_dim=32, phrase_hidden_dim=32, num_layers=1, dropout=0.0,
        steps_per_bar=16, bars_per_phrase=2, expressive=True, **kw)).eval()


def test_terms_are_mse_on_true_hit_cells_only():
    batch = _batch()
    pred = (torch.full((3, L - 1, D), 0.5), torch.zeros(3, L - 1, D))
    terms = expressive_terms(pred, batch)
    hit = (batch["step"][:, 1:] > 0) & batch["mask"][:, 1:, None]
    want_v = ((batch["velocity"][:, 1:].float() / 127 - 0.5) ** 2)[hit].mean()
    want_o = ((batch["offset"][:, 1:].float() / 128) ** 2)[hit].mean()
    torch.testing.assert_close(terms["velocity"], want_v)
    torch.testing.assert_close(terms["offset"], want_o)
    # values off the hits (rests, padding) do not count
    other = {**batch, "velocity": batch["velocity"].clone(), "offset": batch["offset"].clone()}
    off_hit = torch.ones(3, L, D, dtype=torch.bool)
    off_hit[:, 1:] = ~hit
    other["velocity"][off_hit], other["offset"][off_hit] = 127, 64
    assert expressive_terms(pred, other) == terms
    total, logged = add_expressive_loss(torch.tensor(1.0), {"step": 1.0}, pred, batch, {"velocity": 2.0, "offset": 0.0})
    torch.testing.assert_close(total, 1.0 + 2.0 * want_v)
    assert set(logged) == {"step", "velocity", "offset"}


def test_incremental_heads_equal_teacher_forced_heads():
    """Generation's path (step() + the heads on the sampled hits) gives what forward gives for the
    same hits: the heads see only the past and the step's own hits."""
    model, batch = _model(lookback_bars=1), _batch(1, B=2)
    step = batch["step"]
    with torch.no_grad():
        vel, off = model(step)[3]
        state = model.init_state(2)
        for t in range(L - 1):
            model.step(step[:, t], state)
            v, o = model.expressive(state.features, step[:, t + 1] > 0)
            torch.testing.assert_close(v, vel[:, t], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(o, off[:, t], rtol=1e-4, atol=1e-5)


def test_generate_returns_velocity_and_offset_of_each_sampled_step():
    model = _model()
    hits, vel, off = model.generate(length=32, batch_size=2, seed=3, expressive=True)
    assert hits.shape == vel.shape == off.shape == (2, 32, D)
    assert ((vel > 0) & (vel < 1)).all() and (off.abs() < 0.5).all()
    again = model.generate(length=32, batch_size=2, seed=3)
    torch.testing.assert_close(again, hits)          # the heads draw no random numbers


def test_training_learns_velocity_by_drum():
    """Sixty steps on a part whose kick is loud and hi-hat soft: velocity MSE drops well
    below its start and the two drums come out apart."""
    model = _model().train()
    batch = _batch(2)
    batch["velocity"] = (batch["step"] * torch.tensor([120, 0, 40, 0, 0, 0, 0, 0, 0])[None, None]).to(torch.uint8)
    batch["step"] = batch["step"] * (batch["velocity"] > 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        total, terms = model.compute_loss(model(batch["step"]), batch, {"step": 0.0, "bar": 0.0, "phrase": 0.0})
        opt.zero_grad()
        total.backward()
        opt.step()
        first = first if first is not None else float(terms["velocity"])
    assert float(terms["velocity"]) < 0.1 * first
    model.eval()
    vel, _ = model(batch["step"])[3]
    hit = batch["step"][:, 1:] > 0
    assert vel[..., 0][hit[..., 0]].mean() * 127 > 100 and vel[..., 2][hit[..., 2]].mean() * 127 < 60


def test_midi_values_are_clamped_and_zero_off_hits():
    hits = np.array([[1, 0, 1]])
    vel, off = to_midi_values(hits, np.array([[1.2, 0.5, -0.1]]), np.array([[-0.9, 0.2, 0.26]]))
    assert vel.tolist() == [[127, 0, 1]] and off.tolist() == [[-64, 0, 33]]
    assert vel.dtype == np.uint8 and off.dtype == np.int8


def test_history_incremental_equals_teacher_forced_and_is_causal():
    """With expressive_history the heads read the played steps before: step() fed each step's
    (velocity / 127, offset) then play() gives forward's teacher-forced values, and changing how
    step t was played changes the predictions of steps t+1.. only."""
    model, batch = _model(lookback_bars=1, expressive_history=True), _batch(1, B=2)
    step, vel_in, off_in = batch["step"], batch["velocity"], batch["offset"]
    with torch.no_grad():
        vel, off = model(step, velocity=vel_in, offset=off_in)[3]
        state = model.init_state(2)
        for t in range(L - 1):
            model.step(step[:, t], state, played=(vel_in[:, t].float() / 127, off_in[:, t].float() / 128))
            v, o = model.play(state, step[:, t + 1])
            torch.testing.assert_close(v, vel[:, t], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(o, off[:, t], rtol=1e-4, atol=1e-5)
        louder = vel_in.clone()
        louder[:, 20] = step[:, 20].to(torch.uint8) * 127
        vel2, _ = model(step, velocity=louder, offset=off_in)[3]
    assert torch.equal(vel2[:, :20], vel[:, :20])          # pred k is step k+1's: reads steps <= k
    assert (vel2[:, 20] - vel[:, 20]).abs().max() > 1e-4


def test_prime_velocities_are_returned_and_carried_into_the_continuation():
    """generate(prime_played=...) returns the prime's own velocity and offset over the prime, and
    the history reads them: a louder prime changes how the same sampled hits are played."""
    model = _model(expressive_history=True)
    prime = _batch(4, B=1)["step"][0, :32]
    soft, late = prime * 0.2, prime * 0.25
    hits, vel, off = model.generate(prime, length=16, seed=5, expressive=True, prime_played=(soft, late))
    torch.testing.assert_close(vel[:32], soft)
    torch.testing.assert_close(off[:32], late)
    hits2, vel2, _ = model.generate(prime, length=16, seed=5, expressive=True, prime_played=(prime * 0.95, late))
    torch.testing.assert_close(hits2, hits)          # the hit model does not read velocities
    assert (vel2[32:] - vel[32:]).abs().max() > 1e-4


def test_spread_term_is_the_gaussian_nll_of_the_residual_and_moves_only_the_spread():
    """`spread` = mean over hit cells of log σ + (x − μ)² / 2σ², summed over velocity and offset;
    its gradient reaches the spread MLP and nothing else (the means and the hit model train as before)."""
    model, batch = _model(expressive_spread=True).train(), _batch(4)
    preds = model(batch["step"], velocity=batch["velocity"], offset=batch["offset"])
    vel, off, sd_v, sd_o = preds[3]
    terms = expressive_terms(preds[3], batch)
    hit = (batch["step"][:, 1:] > 0) & batch["mask"][:, 1:, None]

    def nll(mu, sd, want):
        return (torch.log(sd) + (want - mu) ** 2 / (2 * sd ** 2))[hit].mean()
    want = nll(vel, sd_v, batch["velocity"][:, 1:].float() / 127) + nll(off, sd_o, batch["offset"][:, 1:].float() / 128)
    torch.testing.assert_close(terms["spread"], want)
    model.zero_grad()
    terms["spread"].backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and all(n.startswith("expressive.spread.") for n in moved), moved
    model.zero_grad()
    preds = model(batch["step"], velocity=batch["velocity"], offset=batch["offset"])
    mse = expressive_terms(preds[3], batch)
    (mse["velocity"] + mse["offset"]).backward()
    assert all(p.grad is None or not p.grad.abs().sum() for p in model.expressive.spread.parameters())


def test_spread_learns_the_residual_scale():
    """Offsets drawn around 0 with σ = 0.1 step: fitting the spread term brings σ near 0.1."""
    model, batch = _model(expressive_spread=True).train(), _batch(5)
    g = torch.Generator().manual_seed(0)
    batch["offset"] = (batch["step"] * torch.randn(batch["step"].shape, generator=g) * 0.1 * 128).round().to(torch.int8)
    opt = torch.optim.Adam(model.expressive.spread.parameters(), lr=1e-2)
    for _ in range(150):
        terms = expressive_terms(model(batch["step"], velocity=batch["velocity"], offset=batch["offset"])[3], batch)
        opt.zero_grad()
        terms["spread"].backward()
        opt.step()
    with torch.no_grad():
        vel, off, _, sd_o = model(batch["step"], velocity=batch["velocity"], offset=batch["offset"])[3]
    hit = batch["step"][:, 1:] > 0
    rms = ((batch["offset"][:, 1:].float() / 128 - off)[hit] ** 2).mean().sqrt()
    assert abs(float(sd_o[hit].mean()) - float(rms)) < 0.25 * float(rms)


def test_generation_draws_velocity_and_offset_from_the_spread():
    """expressive_temperature 0 plays the means (as a model without spread); 1 draws around them,
    reproducibly by seed, and the draws' residuals have the spread's scale."""
    model = _model(expressive_spread=True)
    with torch.no_grad():   # σ = 0.05 everywhere: no draw reaches the clipped ends of the ranges
        model.expressive.spread[-1].weight.zero_()
        model.expressive.spread[-1].bias.fill_(float(np.log(0.05)))
    hits0, vel0, off0 = model.generate(length=32, batch_size=4, seed=3, expressive=True, expressive_temperature=0.0)
    hits1, vel1, off1 = model.generate(length=32, batch_size=4, seed=3, expressive=True)
    again = model.generate(length=32, batch_size=4, seed=3, expressive=True)
    for a, b in zip((hits1, vel1, off1), again):
        torch.testing.assert_close(a, b)
    assert ((vel1 > 0) & (vel1 <= 1)).all() and (off1.abs() <= 0.5).all()
    # the means: the heads on the hits drawn (teacher forced, as the incremental test shows)
    with torch.no_grad():
        mv, mo, sv, so = model(hits1, velocity=(vel1 * 127).round(), offset=(off1 * 128).round())[3]
    hit = hits1[:, 1:] > 0
    z = ((off1[:, 1:] - mo) / so)[hit]
    assert 0.8 < float(z.std()) < 1.2 and not torch.allclose(vel1, vel0)
    state = model.init_state(1)
    model.step(torch.zeros(1, D), state)
    h = torch.ones(1, D)
    torch.testing.assert_close(model.play(state, h), model.play(state, h, torch.Generator(), 0.0))


def test_a_model_trained_on_grid_only_data_plays_on_the_grid():
    """expressive_timing=False (the trainer's choice when every offset of the export is 0): the
    heads' offsets, drawn or not, are replaced by 0; velocities still vary."""
    model = _model(expressive_spread=True, expressive_timing=False)
    assert model.config["expressive_timing"] is False
    hits, vel, off = model.generate(length=32, batch_size=3, seed=1, expressive=True)
    assert hits.sum() > 0 and not off.any() and vel[hits > 0].std() > 0
    # on, as a checkpoint from before the key existed reads (train.model.upgrade)
    plain = _model(expressive_spread=True).config
    assert plain["expressive_timing"] is True
    assert upgrade({k: v for k, v in plain.items() if k != "expressive_timing"}).to_dict() == plain


def test_has_timing_reads_the_exported_offsets(tmp_path):
    from train.training.data import CompleteHierarchicalDrumDataset
    ds = CompleteHierarchicalDrumDataset.__new__(CompleteHierarchicalDrumDataset)
    ds.ready = tmp_path
    assert ds.has_timing is False                      # an export without offsets
    offsets = np.zeros((1000, D), np.int8)
    np.save(tmp_path / "offset.npy", offsets)
    assert ds.has_timing is False
    offsets[999, 3] = -2
    np.save(tmp_path / "offset.npy", offsets)
    assert ds.has_timing is True

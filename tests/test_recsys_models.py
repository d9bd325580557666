"""VBPR / MMGCN recommenders and BPR training: the scoring protocol, hand-computed scores, fit, negatives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparring.errors import ConfigError, DataError
from sparring.objectives import Objective, build
from sparring.recsys.data import RecData, synthetic
from sparring.recsys.metrics import ranking_metrics
from sparring.recsys.models import MMGCN, VBPR, ModalityProjector, Recommender, available, build_recommender
from sparring.recsys.train import epoch_generator, fit, sample_negatives, sample_triples

NAMES = ["vbpr", "mmgcn"]
SMALL = {"dim": 16, "visual_hidden": (32,), "text_hidden": (16,)}


@pytest.fixture(scope="module")
def tiny() -> RecData:
    return synthetic(n_users=40, n_items=30, dim=12, interactions_per_user=6, seed=1)


@pytest.fixture(scope="module")
def data() -> RecData:
    return synthetic(seed=0)


def make(name: str, data: RecData, seed: int = 0, **settings) -> Recommender:
    torch.manual_seed(seed)
    extra = {"latent": 32} if name == "mmgcn" else {}
    return build_recommender(name, data, **{**SMALL, **extra, **settings})


def perturbed(model: Recommender, copies: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, n_items, dim) aligned features with a different item pushed in each copy."""
    gen = torch.Generator().manual_seed(seed)
    v, t = model.aligned()
    v, t = v.detach().expand(copies, -1, -1).clone(), t.detach().expand(copies, -1, -1).clone()
    for c in range(copies):
        v[c, c] += 0.5 * torch.randn(model.dim, generator=gen)
        t[c, c] += 0.5 * torch.randn(model.dim, generator=gen)
    return v, t


def test_registry_and_projector(tiny):
    assert set(NAMES) <= set(available())
    proj = ModalityProjector(visual_dim=12, text_dim=7, visual_hidden=(20, 10), text_hidden=(9,), out_dim=5)
    v, t = proj(torch.randn(4, 12), torch.randn(4, 7))
    assert v.shape == t.shape == (4, 5)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(t.norm(dim=1), torch.ones(4))
    widths = [m.normalized_shape[0] for m in proj.visual if isinstance(m, torch.nn.LayerNorm)]
    assert widths == [20, 10]  # d_v → 20 → 10 → 5 with a LayerNorm after each hidden layer
    default = ModalityProjector(visual_dim=12, text_dim=7)
    assert [m.out_features for m in default.visual if isinstance(m, torch.nn.Linear)] == [1024, 256, 64]
    assert [m.out_features for m in default.text if isinstance(m, torch.nn.Linear)] == [256, 64]


@pytest.mark.parametrize("name", NAMES)
def test_protocol_shapes(name, tiny):
    model = make(name, tiny)
    assert isinstance(model, {"vbpr": VBPR, "mmgcn": MMGCN}[name])
    assert (model.n_users, model.n_items) == (40, 30)
    assert dict(model.named_buffers())["image"].shape == (30, 12) and model.text.shape == (30, 12)
    assert "image" not in dict(model.named_parameters())
    v, t = model.aligned()
    assert v.shape == t.shape == (30, 16) and v.requires_grad
    torch.testing.assert_close(v.norm(dim=1), torch.ones(30))
    users = torch.tensor([0, 3, 3, 39])
    scores = model.score_all(users)
    assert scores.shape == (4, 30)
    items = torch.tensor([1, 2, 29, 0])
    pairs = model.score_pairs(users, items)
    assert pairs.shape == (4,)
    torch.testing.assert_close(pairs, scores[torch.arange(4), items])
    x = torch.stack([users, items, torch.tensor([5, 6, 7, 8])], dim=1)
    logits = model(x)
    assert logits.shape == (4, 2)
    torch.testing.assert_close(logits[:, 1], scores[torch.arange(4), x[:, 2]])
    reg = model.regularization(x)
    assert reg.shape == (4,) and (reg > 0).all()
    # Replacing the features by the clean aligned ones changes nothing.
    torch.testing.assert_close(model.score_all(users, v, t), scores)
    torch.testing.assert_close(model(x, v_hat=v, t_hat=t), logits)


@pytest.mark.parametrize("name", NAMES)
def test_batched_copies_equal_separate_calls(name, tiny):
    model = make(name, tiny)
    v, t = perturbed(model, copies=3)
    users = torch.tensor([0, 5, 17])
    x = torch.tensor([[0, 1, 2], [5, 0, 9], [17, 2, 2]])
    batched_all = model.score_all(users, v, t)
    batched_pairs = model.score_pairs(users, x[:, 1], v, t)
    batched_logits = model(x, v_hat=v, t_hat=t)
    assert batched_all.shape == (3, 3, 30) and batched_pairs.shape == (3, 3) and batched_logits.shape == (3, 3, 2)
    for c in range(3):
        torch.testing.assert_close(batched_all[c], model.score_all(users, v[c], t[c]))
        torch.testing.assert_close(batched_pairs[c], model.score_pairs(users, x[:, 1], v[c], t[c]))
        torch.testing.assert_close(batched_logits[c], model(x, v_hat=v[c], t_hat=t[c]))
    # Only one modality batched: the other is the clean aligned one, broadcast.
    only_v = model.score_all(users, v_hat=v)
    assert only_v.shape == (3, 3, 30)
    torch.testing.assert_close(only_v[1], model.score_all(users, v[1], model.aligned()[1]))
    assert not torch.allclose(batched_all[0], batched_all[1])


@pytest.mark.parametrize("name", NAMES)
def test_feature_gradients(name, tiny):
    """Scores are differentiable in v_hat / t_hat; in MMGCN a perturbed item moves other items' scores too."""
    model = make(name, tiny)
    v, t = (f.detach().clone().requires_grad_(True) for f in model.aligned())
    users = torch.arange(10)
    model.score_all(users, v, t)[:, 4].sum().backward()
    assert v.grad[4].abs().sum() > 0 and t.grad[4].abs().sum() > 0
    graph_spreads = v.grad[torch.arange(30) != 4].abs().sum() > 0
    assert graph_spreads == (name == "mmgcn")  # VBPR's item 4 depends only on its own features


def test_vbpr_scores_by_hand(tiny):
    model = make("vbpr", tiny)
    v, t = model.aligned()
    u, i = 7, 11
    gamma_u, theta_u = model.user_embedding[u, :16], model.user_embedding[u, 16:]
    content = model.item_linear.weight @ torch.cat([t[i], v[i]]) + model.item_linear.bias
    expected = gamma_u @ model.item_embedding[i] + theta_u @ content
    torch.testing.assert_close(model.score_pairs(torch.tensor([u]), torch.tensor([i]))[0], expected)
    # Standard cross-entropy against label 0 is BPR: −log σ(s⁺ − s⁻).
    x = torch.tensor([[7, 11, 3], [2, 0, 29]])
    logits = model(x)
    out = build("standard")(model, x, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out.loss, -F.logsigmoid(logits[:, 0] - logits[:, 1]))
    item_e = torch.cat([model.item_embedding, model.item_linear(torch.cat([t, v], 1))], 1)
    expected_reg = 0.5 * (model.user_embedding[x[:, 0]].square().sum(1) + item_e[x[:, 1]].square().sum(1)
                          + item_e[x[:, 2]].square().sum(1))
    torch.testing.assert_close(model.regularization(x), expected_reg)


def test_mmgcn_by_hand(tiny):
    """A dense D⁻¹A and the layer equations written out give the same representations."""
    model = make("mmgcn", tiny)
    n, n_u = tiny.n_users + tiny.n_items, tiny.n_users
    adj = torch.zeros(n, n)
    adj[tiny.train[:, 0], tiny.train[:, 1] + n_u] = 1.0
    adj[tiny.train[:, 1] + n_u, tiny.train[:, 0]] = 1.0
    adj = adj / adj.sum(1, keepdim=True).clamp(min=1)
    v, t = model.aligned()
    total = 0
    for name, feats in (("visual", v), ("text", t)):
        g = model.gcn[name]
        x = F.normalize(torch.cat([g.preference, g.mlp(feats)]), dim=1)
        for w, lin, gate in ((g.conv1, g.linear1, g.gate1), (g.conv2, g.linear2, g.gate2)):
            h = F.leaky_relu(adj @ (x @ w))
            x = F.leaky_relu(gate(h) + F.leaky_relu(lin(x)) + model.id_embedding)
        total = total + x
    users, items = model.embed()
    torch.testing.assert_close(users, total[:n_u])
    torch.testing.assert_close(items, total[n_u:])
    x = torch.tensor([[3, 1, 2]])
    expected = torch.stack([total[3] @ total[n_u + 1], total[3] @ total[n_u + 2]])
    torch.testing.assert_close(model(x)[0], expected)
    ids = model.id_embedding
    reg = (2 * ids[3].square().sum() + ids[n_u + 1].square().sum() + ids[n_u + 2].square().sum()) / 32
    reg = reg + sum(model.gcn[m].preference[3].square().sum() / 32 for m in ("visual", "text"))
    torch.testing.assert_close(model.regularization(x)[0], reg)
    mean = make("mmgcn", tiny, combine="mean")
    torch.testing.assert_close(mean.embed()[1], items / 2)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name, tiny):
    a, b = make(name, tiny, seed=0), make(name, tiny, seed=1)
    users = torch.arange(5)
    assert not torch.allclose(a.score_all(users), b.score_all(users))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.score_all(users), b.score_all(users))


def test_bad_input(tiny):
    model = make("vbpr", tiny)
    with pytest.raises(DataError, match=r"\(B, 3\)"):
        model(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(DataError, match=r"\(B, 3\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match="integer"):
        model(torch.zeros(4, 3))
    with pytest.raises(DataError, match="v_hat"):
        model.score_all(torch.arange(3), v_hat=torch.zeros(29, 16))
    with pytest.raises(DataError, match="copies"):
        model.score_all(torch.arange(3), v_hat=torch.zeros(2, 30, 16), t_hat=torch.zeros(3, 30, 16))
    with pytest.raises(ConfigError, match="unknown recommender 'bpr-mf'"):
        build_recommender("bpr-mf", tiny)
    with pytest.raises(ConfigError, match="combine"):
        build_recommender("mmgcn", tiny, combine="max")
    with pytest.raises(ConfigError, match="vbpr"):
        build_recommender("vbpr", tiny, hidden=3)
    with pytest.raises(ConfigError, match="visual_hidden"):
        build_recommender("vbpr", tiny, visual_hidden=64)
    with pytest.raises(ConfigError, match="RecData"):
        VBPR(data=tiny.train)
    with pytest.raises(ConfigError, match="Recommender"):
        fit(torch.nn.Linear(3, 2), tiny, build("standard"))
    other = synthetic(n_users=41, n_items=30, dim=12, interactions_per_user=6, seed=1)
    with pytest.raises(DataError, match="41"):
        fit(model, other, build("standard"), epochs=1)
    with pytest.raises(ConfigError, match="batch_size"):
        fit(model, tiny, build("standard"), batch_size=0)


def test_negatives_never_positives(data):
    seen = data.mask("train")
    triples = sample_triples(data, epoch_generator(0, 0))
    assert triples.shape == (len(data.train), 3) and triples.dtype == torch.int64
    assert not seen[triples[:, 0], triples[:, 2]].any()
    assert seen[triples[:, 0], triples[:, 1]].all()
    # Every training pair appears once (a shuffle, not a resample).
    assert sorted(map(tuple, triples[:, :2].tolist())) == sorted(map(tuple, data.train.tolist()))
    # Negatives cover the allowed items roughly uniformly (no item is favoured by the rejection step).
    counts = torch.bincount(triples[:, 2], minlength=data.n_items).float()
    assert counts.min() > 0.4 * counts.mean()


def test_negatives_of_a_nearly_full_user():
    """A user with every item but one gets that one item (the exact fallback after rejection rounds)."""
    n_items = 50
    train = torch.tensor([[0, i] for i in range(n_items) if i != 17] + [[1, 0], [1, 1]])
    empty = torch.zeros(0, 2, dtype=torch.long)
    data = RecData(n_users=2, n_items=n_items, train=train, valid=empty, test=empty,
                   image=torch.randn(n_items, 4), text=torch.randn(n_items, 4))
    users = torch.zeros(200, dtype=torch.long)
    assert (sample_negatives(data, users, torch.Generator().manual_seed(0), max_rounds=2) == 17).all()
    full = RecData(n_users=1, n_items=3, train=torch.tensor([[0, 0], [0, 1], [0, 2]]), valid=empty, test=empty,
                   image=torch.randn(3, 4), text=torch.randn(3, 4))
    with pytest.raises(DataError, match="every item"):
        sample_negatives(full, torch.zeros(2, dtype=torch.long), torch.Generator().manual_seed(0))


def test_sampling_determinism():
    data = synthetic(n_users=40, n_items=30, dim=12, interactions_per_user=6, seed=1)
    a, b = sample_triples(data, epoch_generator(3, 2)), sample_triples(data, epoch_generator(3, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_triples(data, epoch_generator(3, 3)))
    assert not torch.equal(a, sample_triples(data, epoch_generator(4, 2)))


@pytest.mark.parametrize("name", NAMES)
def test_fit_lowers_loss_and_beats_random(name, data, single_thread):
    model = make(name, data)
    before = ranking_metrics(model, data, split="test", ks=(20,))["recall@20"]
    logged = []
    records = fit(model, data, build("standard"), epochs=10, batch_size=1024, lr=3e-3, seed=0, log=logged.append)
    assert len(records) == 10 and logged == records
    assert {"epoch", "loss", "objective_loss", "reg", "time"} <= set(records[0])
    assert records[-1]["loss"] < records[0]["loss"] - 0.1
    after = ranking_metrics(model, data, split="test", ks=(20,))["recall@20"]
    # A random ranking finds about 20/284 of a user's held-out items; the planted structure allows far more.
    assert before < 0.12 and after > max(0.2, 2 * before), (before, after)
    assert model.training  # fit restores the mode it found (a new module is in training mode)


def test_fit_determinism_and_mode(tiny, single_thread):
    runs = []
    for _ in range(2):
        model = make("mmgcn", tiny).eval()
        records = fit(model, tiny, build("standard"), epochs=3, batch_size=64, seed=5)
        assert not model.training
        runs.append((records, model.state_dict()))
    (rec_a, state_a), (rec_b, state_b) = runs
    assert [r["loss"] for r in rec_a] == [r["loss"] for r in rec_b]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    other = make("mmgcn", tiny).eval()
    rec_c = fit(other, tiny, build("standard"), epochs=3, batch_size=64, seed=6)
    assert [r["loss"] for r in rec_c] != [r["loss"] for r in rec_a]


def test_fit_averages_objective_metrics(tiny):
    """Scalar metrics of the objective are averaged per epoch; the trainer minimises loss + reg_weight · reg."""

    class Tagged(Objective):  # an Objective: the core Trainer also binds its optimizer and asks for events
        name = "tagged"

        def __init__(self) -> None:
            self.inner, self.calls = build("standard"), 0

        def __call__(self, model, x, y, *, generator=None):
            assert x.shape[1] == 3 and (y == 0).all() and generator is not None
            self.calls += 1
            out = self.inner(model, x, y)
            out.metrics = {"calls": float(self.calls), "vector": torch.zeros(3)}
            return out

        def on_train_begin(self, model, **kw):
            self.begun = kw

        def on_epoch_begin(self, model, *, epoch):
            return {"hook": epoch}

        def on_epoch_end(self, model, **kw):
            return {}

    objective = Tagged()
    model = make("vbpr", tiny)
    n = len(tiny.train)
    sizes = [min(50, n - lo) for lo in range(0, n, 50)]
    records = fit(model, tiny, objective, epochs=2, batch_size=50, reg_weight=0.5)
    assert objective.begun["epochs"] == 2 and objective.begun["class_counts"] == [len(tiny.train), 0]
    assert records[1]["hook"] == 1 and "vector" not in records[0]
    # The core Trainer averages a batch metric over the epoch's rows (a short last batch weighs less).
    assert records[0]["calls"] == pytest.approx(sum((b + 1) * rows for b, rows in enumerate(sizes)) / n)
    # ``reg`` is the Trainer's train_regularizer: the weighted term reg_weight · mean regularization.
    assert records[0]["loss"] == pytest.approx(records[0]["objective_loss"] + records[0]["reg"], rel=1e-5)

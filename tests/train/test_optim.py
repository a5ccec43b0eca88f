"""The flat-parameter optimiser against PyTorch's AdamW over the separate
parameters: the same values, gradients and updates."""
import copy

import pytest
import torch
from torch_geometric.data import Batch

from graphformer.data import from_smiles
from graphformer.data.encodings import encodings
from graphformer.models import GraphTransformer, GraphTransformerConfig, masked_loss
from graphformer.models.baselines import GINBaseline
from graphformer.models.pretrain import PretrainModel, pretrain_losses
from graphformer.train.optim import (FlatParameter, clip_grad_norm, flatten_parameters,
                                     load_optimizer_state, make_optimizer, optimised_parameters,
                                     optimizer_step, zero_grad)

SMILES = ["CCO", "c1ccccc1O", "C", "CC(=O)Nc1ccc(O)cc1", "[Na+].[Cl-]", "CCN(CC)CC"]


def batch_of(smiles, cfg):
    t = encodings(cfg.rwse_steps, cfg.lap_pe)
    return Batch.from_data_list([t(from_smiles(s)) for s in smiles])


def model_and_batch(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GraphTransformerConfig(hidden=16, layers=2, heads=2, **kw)
    return GraphTransformer(cfg), batch_of(SMILES, cfg)


def loss_of(model, batch, seed):
    torch.manual_seed(seed)  # the same dropout in both models
    return masked_loss(model(batch), torch.linspace(-1, 1, batch.num_graphs)[:, None],
                       "regression")


def reference_step(model, loss, optimizer, clip):
    """The optimiser step before flattening: grads set to None, clipping over
    the model's parameters."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


def test_flattening_keeps_values_and_makes_views():
    model, _ = model_and_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    flat = flatten_parameters(params)
    assert isinstance(flat, FlatParameter)
    assert flat.numel() == sum(p.numel() for p in params)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    offset = 0
    for p in params:  # each parameter and its gradient are views at its offset
        assert p.data_ptr() == flat.data_ptr() + offset * flat.element_size()
        assert p.grad.data_ptr() == flat.grad.data_ptr() + offset * flat.element_size()
        offset += p.numel()
    with torch.no_grad():
        flat.add_(1.0)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k] + 1.0), k


def test_flat_gradient_is_every_parameter_gradient():
    model, batch = model_and_batch()
    ref = copy.deepcopy(model)
    flat = flatten_parameters(list(model.parameters()))
    loss_of(model, batch, 1).backward()
    loss_of(ref, batch, 1).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
    torch.testing.assert_close(flat.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("clip", [0.0, 1e9, 0.05])
def test_training_matches_adamw_over_separate_parameters(clip):
    model, batch = model_and_batch()
    ref = copy.deepcopy(model)
    opt = make_optimizer(model, 1e-2, 1e-2)
    assert len(optimised_parameters(opt)) == 1
    ref_opt = torch.optim.AdamW(list(ref.parameters()), lr=1e-2, weight_decay=1e-2, fused=True)
    for step in range(6):
        optimizer_step(model, loss_of(model, batch, step), opt, clip)
        reference_step(ref, loss_of(ref, batch, step), ref_opt, clip)
    for (k, a), b in zip(model.named_parameters(), ref.parameters()):
        if clip == 0.05:  # the norm is summed in another order: float rounding only
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
        else:  # AdamW is element-wise, unclipped gradients are the same: bit for bit
            assert torch.equal(a, b), k


@pytest.mark.parametrize("kw", [{}, {"pooling": "virtual"}, {"local": "gine"}, {"lap_pe": 4},
                                {"patterns": ("bonds",)}, {"patterns": ("bonds", "k_hop")},
                                {"norm_first": False}])
def test_every_parameter_of_the_model_gets_a_gradient(kw):
    # Flattening gives an unused parameter a zero gradient instead of None,
    # which AdamW would then decay; the bundled models use every parameter.
    model, batch = model_and_batch(**kw)
    loss_of(model.train(), batch, 0).backward()
    assert [k for k, p in model.named_parameters() if p.grad is None] == []


def test_baseline_and_pretraining_model_use_every_parameter():
    cfg = GraphTransformerConfig(hidden=16, layers=2, heads=2)
    batch = batch_of(SMILES, cfg)
    gin = GINBaseline(cfg)
    masked_loss(gin(batch), torch.zeros(batch.num_graphs, 1), "regression").backward()
    assert [k for k, p in gin.named_parameters() if p.grad is None] == []
    pre = PretrainModel(cfg, num_descriptors=3)
    mask = torch.zeros(batch.num_nodes, dtype=torch.bool)
    mask[::3] = True
    out = pretrain_losses(pre, batch, mask, torch.zeros(batch.num_graphs, 3))
    (out["atom"] + out["descriptors"]).backward()
    assert [k for k, p in pre.named_parameters() if p.grad is None] == []


def test_parameters_that_cannot_share_a_buffer_stay_separate():
    assert flatten_parameters([]) is None
    a = torch.nn.Parameter(torch.ones(3))
    assert flatten_parameters([a, torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]) is None
    assert flatten_parameters([a, torch.nn.Parameter(torch.ones(2), requires_grad=False)]) is None
    base = torch.zeros(6)
    tied = [torch.nn.Parameter(base[:3]), torch.nn.Parameter(base[3:])]
    assert flatten_parameters(tied) is None
    lin = torch.nn.Linear(3, 3).double()
    lin.weight.requires_grad_(False)
    opt = make_optimizer(lin, 1e-3, 0.0)  # falls back to the separate parameters
    assert [p is q for p, q in zip(optimised_parameters(opt), lin.parameters())] == [True, True]
    optimizer_step(lin, lin(torch.ones(1, 3, dtype=torch.float64)).sum(), opt, 1.0)


def test_state_of_an_optimiser_over_separate_parameters_loads_into_the_flat_one():
    # A checkpoint written before the parameters were flattened resumes exactly.
    model, batch = model_and_batch()
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW(list(ref.parameters()), lr=1e-2, weight_decay=1e-2, fused=True)
    for step in range(3):
        reference_step(ref, loss_of(ref, batch, step), ref_opt, 0.0)
    model.load_state_dict(ref.state_dict())
    opt = make_optimizer(model, 1e-2, 1e-2)
    load_optimizer_state(opt, copy.deepcopy(ref_opt.state_dict()))
    assert float(opt.state[optimised_parameters(opt)[0]]["step"]) == 3
    for step in range(3, 6):
        reference_step(ref, loss_of(ref, batch, step), ref_opt, 0.0)
        optimizer_step(model, loss_of(model, batch, step), opt, 0.0)
    for (k, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), k
    # and its own state round-trips
    again = make_optimizer(copy.deepcopy(model), 1e-2, 1e-2)
    load_optimizer_state(again, opt.state_dict())
    torch.testing.assert_close(again.state_dict()["state"], opt.state_dict()["state"])


def test_states_that_have_no_flat_equivalent_are_refused():
    model, batch = model_and_batch()
    ref_opt = torch.optim.AdamW(list(model.parameters()), lr=1e-2, fused=True)
    loss_of(model, batch, 0).backward()
    ref_opt.step()
    state = copy.deepcopy(ref_opt.state_dict())
    state["state"][0]["step"] = torch.tensor(7.0)
    opt = make_optimizer(copy.deepcopy(model), 1e-2, 0.0)
    with pytest.raises(ValueError, match="different steps"):
        load_optimizer_state(opt, state)
    state = copy.deepcopy(ref_opt.state_dict())
    state["param_groups"].append(dict(state["param_groups"][0], params=[]))
    with pytest.raises(ValueError, match="2 parameter groups"):
        load_optimizer_state(opt, state)


@pytest.mark.parametrize("max_norm", [1e-3, 1e9])
def test_clipping_the_flat_gradient_is_torchs_clipping(max_norm):
    model, batch = model_and_batch()
    opt = make_optimizer(model, 1e-3, 0.0)
    loss_of(model, batch, 0).backward()
    flat = optimised_parameters(opt)[0]
    expected = torch.nn.Parameter(flat.detach().clone())
    expected.grad = flat.grad.clone()
    torch.nn.utils.clip_grad_norm_([expected], max_norm)
    clip_grad_norm(opt, max_norm)
    assert torch.equal(flat.grad, expected.grad)
    zero_grad(opt)  # in place: the parameters' gradients are still its views
    assert not flat.grad.any() and all(p.grad is not None and not p.grad.any()
                                       for p in model.parameters())


def test_a_second_optimiser_of_a_flattened_model_optimises_its_parameters_separately():
    model, batch = model_and_batch()
    first = make_optimizer(model, 1e-2, 0.0)
    second = make_optimizer(model, 1e-2, 0.0)   # they share one buffer now: left as they are
    assert len(optimised_parameters(first)) == 1
    assert [p is q for p, q in zip(optimised_parameters(second), model.parameters())] \
        == [True] * len(list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer_step(model, loss_of(model, batch, 0), second, 1.0)
    assert all(p.grad is None or p.grad.abs().sum() > 0 for p in model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_a_flat_gradient_set_to_none_is_an_error_not_a_step_that_updates_nothing():
    model, batch = model_and_batch()
    opt = make_optimizer(model, 1e-2, 0.0)
    opt.zero_grad(set_to_none=True)   # cuts the parameters' gradients from the flat one
    with pytest.raises(RuntimeError, match="set to None"):
        optimizer_step(model, loss_of(model, batch, 0), opt, 1.0)

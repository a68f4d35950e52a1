"""chunked.py on its own: head_loss with a chunk function equals the same loss on the whole [N, V]
logits (value and both gradients, whichever of them are wanted), its in-place pieces equal their
plain forms, and teacher_rows reads the rows it is asked for."""
import pytest
import torch
import torch.nn.functional as F

import chunked


def ce_chunk_grad(targets, parts):
    """A chunk function for mean cross-entropy over N tokens, by autograd on the chunk."""
    def chunk_grad(logits, rows, want_grad):
        part, grad = chunked.autograd_chunk(
            lambda z: F.cross_entropy(z, targets[rows], reduction='sum') / targets.numel(), logits)
        parts.append(part.detach())
        return grad if want_grad else None
    return chunk_grad


@pytest.mark.parametrize('wanted', [(True, True), (True, False), (False, True)])
def test_head_loss_equals_the_loss_of_the_whole_logits(wanted):
    g = torch.Generator().manual_seed(0)
    N, d, V = 11, 6, 13
    hidden = torch.randn(N, d, generator=g, dtype=torch.float64).requires_grad_(wanted[0])
    weight = torch.randn(V, d, generator=g, dtype=torch.float64).requires_grad_(wanted[1])
    targets = torch.randint(V, (N,), generator=g)
    parts = []
    loss = chunked.head_loss(hidden, weight, ce_chunk_grad(targets, parts), lambda: sum(parts), chunk_size=4)
    assert len(parts) == 3  # rows 0-3, 4-7, 8-10
    got = torch.autograd.grad(loss, [t for t in (hidden, weight) if t.requires_grad])
    ref_loss = F.cross_entropy(hidden @ weight.T, targets)
    ref = torch.autograd.grad(ref_loss, [t for t in (hidden, weight) if t.requires_grad])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_head_loss_refuses_a_second_backward_and_a_bad_chunk_size():
    hidden, weight = torch.randn(5, 3, requires_grad=True), torch.randn(7, 3)
    targets, parts = torch.zeros(5, dtype=torch.long), []
    loss = chunked.head_loss(hidden, weight, ce_chunk_grad(targets, parts), lambda: sum(parts), chunk_size=2)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='one backward per forward'):
        loss.backward()
    with pytest.raises(ValueError, match='chunk_size'):
        chunked.head_loss(hidden, weight, ce_chunk_grad(targets, []), lambda: 0, chunk_size=0)


def test_in_place_pieces_equal_their_plain_forms():
    z = torch.randn(4, 9, dtype=torch.float64)
    z[0, 3] = -float('inf')  # a masked entry: q = 0 there, and 0·log 0 = 0
    p_logits = torch.randn(4, 9, dtype=torch.float64)
    torch.testing.assert_close(chunked.log_softmax_(z.clone()), F.log_softmax(z, -1))
    q, log_q = chunked.softmax_and_log_softmax_(z.clone())
    torch.testing.assert_close(q, F.softmax(z, -1))
    torch.testing.assert_close(log_q, F.log_softmax(z, -1))
    kl, diff = chunked.reverse_kl_(q, log_q, F.log_softmax(p_logits, -1))
    log_p = F.log_softmax(p_logits, -1)
    expected = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1)
    torch.testing.assert_close(kl, expected)
    assert torch.isfinite(kl).all() and diff[0, 3] == 0


def test_teacher_rows_reads_logits_or_hidden_states_at_the_index():
    g = torch.Generator().manual_seed(1)
    logits, hidden, weight = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 3, generator=g), torch.randn(7, 3)
    index = torch.tensor([9, 0, 4])
    at = chunked.teacher_rows(logits, index=index)
    assert torch.equal(at(slice(0, 2)), logits.reshape(-1, 7)[[9, 0]])
    at = chunked.teacher_rows(hidden=hidden, head_weight=weight, index=index, mm_dtype=torch.float32)
    torch.testing.assert_close(at(slice(1, 3)), hidden.reshape(-1, 3)[[0, 4]] @ weight.T)
    assert chunked.teacher_rows() is None

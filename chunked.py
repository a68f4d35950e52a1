"""
A loss of the logits z = hidden @ head_weight.T without ever holding the [N, V] logits.

At LLM vocabularies the student's logits, and the activations autograd keeps for their loss, are
the memory wall (Liger-Kernel's fused linear cross-entropy, arXiv 2410.10989, and Cut
Cross-Entropy, arXiv 2411.09009, avoid them for CE). Here the N token rows go through in chunks of
C: each chunk's logits z_c = h_c Wᵀ [C, V] are made, their loss share and its gradient
g_c = ∂loss/∂z_c are taken at once (in closed form, or by autograd on the chunk alone), and the
chain rule through the matmul is folded in before the next chunk: ∂loss/∂h_c = g_c W,
∂loss/∂W += g_cᵀ h_c. Forward therefore computes the gradients too; backward only scales them.

The loss itself is the caller's: kl.chunked_kd_loss (CE, KD, ATKD) and
policy_gradient.chunked_minillm_loss (MiniLLM) each give head_loss a `chunk_grad` that sees one
chunk, built from the pieces at the end of this file.
"""
import torch


def head_loss(hidden, head_weight, chunk_grad, total, chunk_size, mm_dtype=None):
    """The loss of logits = hidden @ head_weight.T, chunk by chunk, as a differentiable scalar.

    hidden [N, d], head_weight [V, d]. chunk_grad as in head_grads; it also records each chunk's
    share of the loss, and total() returns the loss (a 0-dim tensor) once every chunk has been
    seen. mm_dtype: the matmul dtype (default matmul_dtype(hidden), read at this call).
    Gradients reach hidden and head_weight only; one backward per forward.
    """
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    mm_dtype = matmul_dtype(hidden) if mm_dtype is None else mm_dtype

    def run(h, w, want_grads):
        grad_hidden, grad_weight = head_grads(h, w, chunk_grad, chunk_size, want_grads, mm_dtype)
        return total(), grad_hidden, grad_weight

    if torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad):
        return _HeadLoss.apply(hidden, head_weight, run)
    return run(hidden, head_weight, (False, False))[0]


class _HeadLoss(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward only rescales them."""

    @staticmethod
    def forward(ctx, hidden, head_weight, run):
        loss, ctx.grad_hidden, ctx.grad_weight = run(hidden, head_weight, ctx.needs_input_grad[:2])
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grad_hidden is None and ctx.grad_weight is None and any(ctx.needs_input_grad[:2]):
            raise RuntimeError("a chunked head loss supports one backward per forward (no retain_graph)")
        # scaled in place and released: no second [V, d] copy of the head's gradient
        grad_hidden, grad_weight = (g.mul_(grad_output) if g is not None else None
                                    for g in (ctx.grad_hidden, ctx.grad_weight))
        ctx.grad_hidden = ctx.grad_weight = None
        return grad_hidden, grad_weight, None


def head_grads(hidden, head_weight, chunk_grad, chunk_size, want_grads, mm_dtype):
    """One pass over the rows of hidden [N, d] in chunks: (∂loss/∂hidden, ∂loss/∂head_weight).

    chunk_grad(logits, rows, want_grad) sees each chunk's logits [C, V] (in mm_dtype, a buffer it
    may overwrite) and returns ∂loss/∂logits [C, V], or None when want_grad is false. The chain
    rule through logits = h Wᵀ: ∂/∂h = g W, ∂/∂W = Σ_chunks gᵀ h. want_grads = (hidden?, weight?);
    an unwanted gradient is returned as None.
    """
    want_hidden, want_weight = want_grads
    weight = head_weight.detach().to(mm_dtype)
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = None  # [V, d] in loss_dtype, made by the first chunk: no zero-filled [V, d] to add it to
    n = hidden.shape[0]
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            h = hidden[rows].detach().to(mm_dtype)
            # the logits are not named here, so that chunk_grad can free them before it returns
            grad = chunk_grad(h @ weight.T, rows, want_hidden or want_weight)
            if grad is None or not (want_hidden or want_weight):
                continue
            grad = grad.to(mm_dtype)
            if want_hidden:
                grad_hidden[rows] = grad @ weight
            if want_weight and grad_weight is None:
                grad_weight = (grad.T @ h).to(loss_dtype(hidden))
            elif want_weight and grad_weight.dtype == mm_dtype:
                grad_weight.addmm_(grad.T, h)  # in place: no [V, d] temporary per chunk
            elif want_weight:
                grad_weight += grad.T @ h
    if want_weight and grad_weight is None:  # no chunk had a gradient
        grad_weight = torch.zeros(head_weight.shape, dtype=loss_dtype(hidden), device=head_weight.device)
    return grad_hidden, grad_weight.to(head_weight.dtype) if want_weight else None


def matmul_dtype(hidden):
    """The dtype hidden @ W.T runs in here: the autocast dtype when the caller is under autocast."""
    device_type = hidden.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype


def loss_dtype(hidden):
    """The dtype losses and head gradients are accumulated in: fp64 stays fp64, else fp32."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


# -----------------------------------------------------------------------------
# pieces the chunk functions share; the first three work in place on a chunk's [C, V] buffers


def log_softmax_(x):
    """log_softmax over the last axis, in place: x − logsumexp(x) (saves one [C, V] buffer per chunk)."""
    return x.sub_(torch.logsumexp(x, -1, keepdim=True))


def log_softmax_as(z, dtype):
    """log_softmax(z) over the last axis in `dtype` (the loss dtype): in z's own buffer when z is in
    it already (log_softmax_), else one fused kernel that reads the half-precision z and writes the
    result (bf16 logits: no separate upcast pass over [C, V], and no more buffers than the upcast)."""
    return log_softmax_(z) if z.dtype == dtype else torch.log_softmax(z, -1, dtype=dtype)


def softmax_and_log_softmax_(z, dtype=None):
    """(softmax(z), log_softmax(z)) over the last axis from one exp pass; the log-softmax in z's buffer,
    or, when z is not in `dtype` (bf16 logits, fp32 losses), in a new `dtype` buffer by log_softmax_as."""
    if dtype is not None and z.dtype != dtype:
        log_z = log_softmax_as(z, dtype)
        return log_z.exp(), log_z
    z = z.sub_(z.amax(-1, keepdim=True))
    q = z.exp()
    total = q.sum(-1, keepdim=True)
    return q.div_(total), z.sub_(total.log_())


def reverse_kl_(q, log_q, log_p):
    """(KL(q‖p) per row, log q − log p) with 0·log 0 = 0 where q = 0 (reverse KL, MiniLLM arXiv 2306.08543
    §2, per token; kl.reverse_kl); the difference in log_p's buffer."""
    diff = log_p.neg_().add_(log_q).masked_fill_(q == 0, 0)
    return torch.linalg.vecdot(q, diff), diff


def autograd_chunk(loss_fn, logits):
    """(loss_fn(logits), its gradient w.r.t. logits), by autograd on this chunk's logits alone: for a
    loss without a closed-form gradient here. `logits` becomes a leaf of a graph that dies with the chunk."""
    with torch.enable_grad():
        leaf = logits.requires_grad_()
        loss = loss_fn(leaf)
        return loss, torch.autograd.grad(loss, leaf)[0]


def teacher_rows(logits=None, hidden=None, head_weight=None, index=None, mm_dtype=None):
    """A function rows -> the teacher's logits at those rows, without gradient: logits [..., V] read at
    rows index[rows] of logits.reshape(-1, V), or hidden [..., d_t] there times head_weight [V, d_t]
    (in mm_dtype), so the teacher's [N, V] logits need not exist all at once either. index None: rows.
    None when neither is given (a loss that needs no teacher)."""
    if logits is None and hidden is None:
        return None
    flat = (logits if logits is not None else hidden).flatten(0, -2)
    weight = head_weight.detach().to(mm_dtype) if logits is None else None

    def at(rows):
        rows = rows if index is None else index[rows]
        if logits is not None:
            return flat[rows].detach()
        with torch.no_grad(), torch.autocast(flat.device.type, enabled=False):
            return flat[rows].to(mm_dtype) @ weight.T
    return at

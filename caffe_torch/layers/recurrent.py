"""Caffe's recurrent layers: RNN, LSTM (RecurrentLayer semantics) and LSTMUnit (one LSTM step).

RNN and LSTM take bottoms
    x (T x N x ...), cont (T x N: 0 starts a new sequence, 1 continues it), [x_static (N x ...)],
    [h_0 (1 x N x H), (LSTM: c_0 (1 x N x H)) -- with recurrent_param.expose_hidden]
and give tops
    RNN: o (T x N x H); LSTM: h (T x N x H);  [h_T (1 x N x H), (LSTM: c_T) -- with expose_hidden].
Learnable blobs, in Caffe's order and shapes (so a .caffemodel from Caffe loads), G = 1 (RNN) or 4 (LSTM):
    W_x (G*H x D, D = x's count from axis 2), b (G*H), [W_static (G*H x S) with x_static], W_h (G*H x H),
    RNN only: W_ho (H x H), b_o (H).
Caffe computes these by an unrolled net; the arithmetic here is the same:
    RNN:  h_t = tanh(W_h (cont_t h_{t-1}) + W_x x_t + b [+ W_static x_static]);  o_t = tanh(W_ho h_t + b_o)
    LSTM: gates_t = W_h (cont_t h_{t-1}) + W_x x_t + b [+ W_static x_static]  (i, f, o, g blocks of H);
          c_t, h_t = LSTMUnit(c_{t-1}, gates_t, cont_t).
Caffe's state rules, kept here:
- Without expose_hidden, h_0 (and c_0) of a forward are the h_T (and c_T) of the previous forward of the same
  layer (zeros at first); no gradient crosses batches. When N changes, Caffe's blob memory rules: more streams
  than ever held since the last growth start from zeros (reallocated); fewer take the first N x H values of the
  state memory, which for a later growth within that size still holds older streams' states.
- With expose_hidden, the h_0 / c_0 bottoms are read but get no gradient (Caffe shares only their data), and
  the h_T / c_T tops pass none back (their diffs are not connected in Caffe either).
- cont gets no gradient (Caffe: AllowForceBackward is false for it).
"""

import torch

from .base import Layer, count, register


class _LSTMUnitFunction(torch.autograd.Function):
    """One LSTM step on (N, H) states, (N, 4H) gate inputs (blocks i, f, o, g) and (N, 1) cont, with
    LSTMUnitLayer's backward: the forget gate is f = cont * sigmoid(x_f) (0 where cont is 0) and its gradient
    is taken as f (1 - f), the derivative only for cont in {0, 1}, as Caffe."""

    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        hidden = c_prev.shape[-1]
        i = torch.sigmoid(gates[:, :hidden])
        f = torch.where(cont == 0, torch.zeros_like(c_prev), cont * torch.sigmoid(gates[:, hidden:2 * hidden]))
        o = torch.sigmoid(gates[:, 2 * hidden:3 * hidden])
        g = torch.tanh(gates[:, 3 * hidden:])
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        h = o * tanh_c
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, h

    @staticmethod
    def backward(ctx, dc, dh):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        dc = torch.zeros_like(c_prev) if dc is None else dc
        dh = torch.zeros_like(c_prev) if dh is None else dh
        c_term = dc + dh * o * (1 - tanh_c * tanh_c)
        d_gates = torch.cat([c_term * g * i * (1 - i),
                             c_term * c_prev * f * (1 - f),
                             dh * tanh_c * o * (1 - o),
                             c_term * i * (1 - g * g)], dim=-1)
        return c_term * f, d_gates, None


def lstm_unit(c_prev, gates, cont):
    """c_t, h_t from c_{t-1} (N, H), gate inputs (N, 4H) and cont (N,)."""
    return _LSTMUnitFunction.apply(c_prev, gates, cont.reshape(-1, 1).to(c_prev.dtype))


@register("LSTMUnit")
class LSTMUnit(Layer):
    """Bottoms c_prev (1 x N x H), gate inputs (1 x N x 4H), cont (1 x N); tops c (1 x N x H), h (1 x N x H)."""

    no_backward_to = (2,)           # sequence markers (need_backward.py)
    force_backward_skips = (2,)

    num_bottoms = (3, 3)
    num_tops = (2, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        c, x, cont = (tuple(s) for s in bottom_shapes)
        if len(c) != 3 or len(x) != 3 or len(cont) != 2:
            raise self.error(f"bottoms must be 1 x N x H, 1 x N x 4H and 1 x N; got {c}, {x}, {cont}")
        if c[0] != 1 or x[0] != 1 or cont[0] != 1 or not c[1] == x[1] == cont[1] or x[2] != 4 * c[2]:
            raise self.error(f"bottoms must be 1 x N x H, 1 x N x 4H and 1 x N; got {c}, {x}, {cont}")
        return [c, c]

    def forward(self, c_prev, gates, cont):
        c, h = lstm_unit(c_prev[0], gates[0], cont.detach()[0])
        return c.unsqueeze(0), h.unsqueeze(0)


class _Recurrent(Layer):
    """What RNN and LSTM share: bottoms, blobs, the hidden-state carry and the time loop."""

    no_backward_to = (1,)           # sequence markers (need_backward.py)
    force_backward_skips = (1,)

    num_bottoms = (2, 5)
    num_tops = (1, 3)
    gates: int = 1                  # G: gate blocks of H in W_x, b, W_static, W_h
    num_states: int = 1             # hidden state blobs: h (RNN); h and c (LSTM)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        rp = param.recurrent_param
        self.hidden = rp.num_output                    # default 0: an error, as Caffe
        if self.hidden <= 0:
            raise self.error("recurrent_param.num_output must be positive")
        self.expose_hidden = rp.expose_hidden          # default false
        exposed = self.num_states if self.expose_hidden else 0
        self.static_input = len(bottom_shapes) > 2 + exposed
        if len(bottom_shapes) != 2 + self.static_input + exposed:
            raise self.error(f"takes bottoms x, cont, [x_static]{', h_0' if exposed else ''}"
                             f"{', c_0' if exposed == 2 else ''}; got {len(bottom_shapes)}")
        if len(param.top) != 1 + exposed:
            raise self.error(f"takes {1 + exposed} top(s) with expose_hidden {str(self.expose_hidden).lower()}, "
                             f"got {len(param.top)}")
        x = tuple(bottom_shapes[0])
        if len(x) < 2:
            raise self.error(f"bottom x must be T x N x ..., got shape {x}")
        self.T = x[0]
        self.top_shapes(bottom_shapes)
        gh = self.gates * self.hidden
        self.add_blob((gh, count(x, 2)), rp.weight_filler)        # W_x  (Caffe W_xh / W_xc)
        self.add_blob((gh,), rp.bias_filler)                      # b    (b_h / b_c)
        if self.static_input:
            self.add_blob((gh, count(bottom_shapes[2], 1)), rp.weight_filler)   # W_static (W_xh_static / W_xc_static)
        self.add_blob((gh, self.hidden), rp.weight_filler)        # W_h  (W_hh / W_hc)
        # Caffe's h_T (, c_T) blobs, detached: (capacity x H), capacity the most streams since the last growth
        self._carry: list[torch.Tensor] | None = None

    def top_shapes(self, bottom_shapes):
        x, cont = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        # at least one feature axis: Caffe's unrolled net reads x with an InnerProduct at axis 2 (and x_static
        # with one at axis 1), which aborts on a blob without that axis
        if len(x) < 3 or x[0] != self.T:
            raise self.error(f"bottom x must be {self.T} x N x features... (T fixed at setup, as Caffe; at least "
                             f"3 axes), got {x}")
        n = x[1]
        if cont != (self.T, n):
            raise self.error(f"bottom cont must be T x N = {(self.T, n)}, got {cont}")
        if self.static_input:
            xs = tuple(bottom_shapes[2])
            if len(xs) < 2 or xs[0] != n:
                raise self.error(f"bottom x_static must be N x features... with N = {n} (at least 2 axes), got "
                                 f"{xs}")
        state = (1, n, self.hidden)
        if self.expose_hidden:
            for k, s in enumerate(bottom_shapes[2 + self.static_input:]):
                if tuple(s) != state:
                    raise self.error(f"hidden state bottom {2 + self.static_input + k} must be {state}, got {s}")
        return [(self.T, n, self.hidden)] + [state] * (self.num_states if self.expose_hidden else 0)

    def _initial_states(self, bottoms, n, like) -> list[torch.Tensor]:
        if self.expose_hidden:
            return [b.detach()[0] for b in bottoms[2 + self.static_input:]]
        if self._carry is None or self._carry[0].shape[0] < n \
                or self._carry[0].dtype != like.dtype or self._carry[0].device != like.device:
            # more streams than the blobs hold: Caffe reallocates them, zero-filled
            self._carry = [like.new_zeros(n, self.hidden) for _ in range(self.num_states)]
        # fewer: Caffe's blobs keep their memory, and h_0 is its first N x H values
        return [c[:n] for c in self._carry]

    def step(self, states, gates, cont_t):
        """New states (same order as `states`) and the output of one time step."""
        raise NotImplementedError

    def forward(self, x, cont, *rest):
        t_steps, n = x.shape[0], x.shape[1]
        w_x, b = self.blobs[0], self.blobs[1]
        x_gates = torch.matmul(x.reshape(t_steps, n, -1), w_x.t()) + b          # T x N x GH
        if self.static_input:
            x_gates = x_gates + torch.matmul(rest[0].reshape(n, -1), self.blobs[2].t())   # + N x GH
        w_h = self.blobs[2 + self.static_input]
        cont = cont.detach()
        states = self._initial_states((x, cont) + rest, n, x)
        outputs = []
        for t in range(t_steps):
            h_conted = states[0] * cont[t].reshape(n, 1)
            gates = torch.matmul(h_conted, w_h.t()) + x_gates[t]
            states, out = self.step(states, gates, cont[t])
            outputs.append(out)
        if not self.expose_hidden:
            self._carry = [torch.cat([s.detach(), c[n:]]) for s, c in zip(states, self._carry)]
        tops = [torch.stack(outputs)]
        if self.expose_hidden:
            tops += [s.detach().unsqueeze(0).clone() for s in states]
        return tuple(tops) if len(tops) > 1 else tops[0]


@register("RNN")
class RNN(_Recurrent):
    """Elman RNN; blobs W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        rp = param.recurrent_param
        self.add_blob((self.hidden, self.hidden), rp.weight_filler)   # W_ho
        self.add_blob((self.hidden,), rp.bias_filler)                 # b_o

    def step(self, states, gates, cont_t):
        h = torch.tanh(gates)
        w_ho, b_o = self.blobs[-2], self.blobs[-1]
        return [h], torch.tanh(torch.matmul(h, w_ho.t()) + b_o)


@register("LSTM")
class LSTM(_Recurrent):
    """LSTM; blobs W_xc, b_c, [W_xc_static], W_hc (gate blocks i, f, o, g); states h, c."""

    gates = 4
    num_states = 2

    def step(self, states, gates, cont_t):
        h_prev, c_prev = states
        c, h = lstm_unit(c_prev, gates, cont_t)
        return [h, c], h

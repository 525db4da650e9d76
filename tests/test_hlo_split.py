"""benchmarks/hlo_text.py and bench_tracker_hlo.py, reading an optimized HLO program: which
top-level instructions are the tracker's tap reductions (fused or alone), its window evaluation, the
compiler's memory-space copies, or the rest, and their operand + output bytes. On XLA:CPU here
(the benchmark itself compiles for TPU, which needs libtpu)."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import bench_tracker_hlo as hlo  # noqa: E402
import hlo_text  # noqa: E402

from dynamics.tracker import SIGNALS_SCOPE, WINDOW_SCOPE  # noqa: E402


def test_shape_bytes_counts_every_array_of_a_tuple():
  assert hlo_text.shape_bytes('(f32[8,56]{1,0:T(8,128)}, bf16[4]{0}, pred[])') == 8 * 56 * 4 + 8 + 1
  tiled = 'bf16[8,56,56,256]{3,0,2,1:T(8,128)(2,1)S(3)}'
  assert hlo_text.shape_bytes(tiled) == 8 * 56 * 56 * 256 * 2
  assert hlo_text.shape_bytes('s32[]') == 4


# A hand-written program with one instruction of each class, its window evaluation behind a
# conditional and a memory-space copy pair.
_TEXT = f"""HloModule m

%fused_tap (p0: f32[4,8], p1: f32[4,8]) -> (f32[4,8], f32[]) {{
  %p0 = f32[4,8]{{1,0}} parameter(0)
  %p1 = f32[4,8]{{1,0}} parameter(1)
  %add = f32[4,8]{{1,0}} add(%p0, %p1), metadata={{op_name="jit(s)/jvp(Net)/add"}}
  %zero = f32[] constant(0)
  %sum = f32[] reduce(%add, %zero), dimensions={{0,1}}, metadata={{op_name="jit(s)/{SIGNALS_SCOPE}/reduce_sum"}}
  ROOT %t = (f32[4,8]{{1,0}}, f32[]) tuple(%add, %sum)
}}

%lone_tap (q0: f32[4,8]) -> f32[] {{
  %q0 = f32[4,8]{{1,0}} parameter(0)
  %z = f32[] constant(0)
  ROOT %s = f32[] reduce(%q0, %z), dimensions={{0,1}}, metadata={{op_name="jit(s)/{SIGNALS_SCOPE}/reduce_sum"}}
}}

%evaluate (e0: f32[16]) -> f32[16] {{
  %e0 = f32[16]{{0}} parameter(0)
  ROOT %sorted = f32[16]{{0}} sort(%e0), dimensions={{0}}, metadata={{op_name="jit(s)/cond/branch_1_fun/{WINDOW_SCOPE}/sort"}}
}}

%skip (k0: f32[16]) -> f32[16] {{
  ROOT %k0 = f32[16]{{0}} parameter(0)
}}

ENTRY %main (a: f32[4,8], b: f32[4,8], w: f32[16], p: pred[]) -> f32[16] {{
  %a = f32[4,8]{{1,0}} parameter(0)
  %b = f32[4,8]{{1,0}} parameter(1)
  %w = f32[16]{{0}} parameter(2)
  %p = pred[] parameter(3)
  %cs = (f32[16]{{0:S(1)}}, f32[16]{{0}}, u32[]) copy-start(%w)
  %cd = f32[16]{{0:S(1)}} copy-done(%cs)
  %f = (f32[4,8]{{1,0}}, f32[]) fusion(%a, %b), kind=kLoop, calls=%fused_tap, backend_config={{"window_config":{{"estimated_cycles":"1965"}}}}
  %x = f32[4,8]{{1,0}} get-tuple-element(%f), index=0
  %lone = f32[] fusion(%x), kind=kInput, calls=%lone_tap
  %neg = f32[4,8]{{1,0}} negate(%x), metadata={{op_name="jit(s)/jvp(Net)/neg"}}, backend_config={{"estimated_cycles":"35"}}
  ROOT %c = f32[16]{{0}} conditional(%p, %cd, %cd), true_computation=%evaluate, false_computation=%skip
}}
"""  # noqa: E501


def test_split_classifies_each_instruction_and_counts_its_bytes():
  split = hlo.split_hlo(_TEXT)
  x = 4 * 8 * 4
  # reads a, b; writes x and the sum
  assert split['taps_fused'] == {'count': 1, 'bytes': 2 * x + x + 4, 'cycles': 1965}
  assert split['taps_standalone'] == {'count': 1, 'bytes': x + 4, 'cycles': 0}
  assert split['window_evaluation'] == {'count': 1, 'bytes': 2 * 16 * 4, 'cycles': 0}
  # copy-start: reads w (64), writes (64 + 64 + 4); copy-done: reads the tuple, writes 64.
  assert split['memory_copies'] == {'count': 2, 'bytes': (64 + 132) + (132 + 64), 'cycles': 0}
  assert split['rest'] == {'count': 1, 'bytes': 2 * x, 'cycles': 35}
  assert hlo_text.estimated_cycles(_TEXT) == 1965 + 35


def test_a_scope_is_found_under_a_transformation_and_only_as_a_whole_segment():
  def one(name):
    return hlo.classify(hlo_text.Instruction('f', 'fusion', 0, 0, (name,)))

  assert one(f'jit(s)/vmap({SIGNALS_SCOPE})/reduce_sum') == 'taps_standalone'  # replicas
  assert one(f'jit(s)/vmap(cond)/branch_1_fun/vmap({WINDOW_SCOPE})/sort') == 'window_evaluation'
  assert one(f'jit(s)/{SIGNALS_SCOPE}_extra/reduce_sum') == 'rest'


def test_split_refuses_text_without_an_entry():
  with pytest.raises(ValueError, match='ENTRY'):
    hlo_text.estimated_cycles('HloModule m\n')


def _step(a, b, w, due):
  x = jax.nn.relu(a + b)
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  with jax.named_scope(SIGNALS_SCOPE):
    signal = jnp.mean(x)
  with jax.named_scope(WINDOW_SCOPE):
    evaluated = jax.lax.cond(due, lambda v: jnp.sum(jnp.sort(v)), lambda v: 0.0, y.reshape(-1))
  return y, signal, evaluated


def test_split_of_a_compiled_program_finds_the_scopes_and_matches_the_compilers_bytes():
  a = jax.ShapeDtypeStruct((8, 16, 16, 32), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
  compiled = jax.jit(_step).lower(a, a, w, jax.ShapeDtypeStruct((), bool)).compile()
  split = hlo.split_hlo(compiled.as_text())
  assert split['taps_fused']['count'] + split['taps_standalone']['count'] >= 1
  assert split['window_evaluation']['count'] >= 1  # the sort behind the conditional
  assert split['rest']['count'] >= 1  # the convolution
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = sum(v['bytes'] for v in split.values())
  assert abs(ours - cost['bytes accessed']) <= 0.05 * cost['bytes accessed']


def _hlo(**cls):
  out = {c: {'count': 0, 'bytes': 0, 'cycles': 0} for c in hlo.CLASSES}
  for name, (count, nbytes, cycles) in cls.items():
    out[name] = {'count': count, 'bytes': nbytes, 'cycles': cycles}
  return out


def test_derive_splits_the_tracker_into_evaluation_and_rest_and_amortizes_the_evaluation():
  r = dict(
      topology='v5e:1x1',
      images_per_chip=128,
      replicas=8,
      window_evaluation_bytes=100e6,
      tracker_on=dict(
          bytes_accessed=1_130e6,
          hlo=_hlo(
              taps_fused=(16, 300e6, 9_000),
              taps_standalone=(1, 3e6, 1_000),
              window_evaluation=(150, 50e6, 300_000),
              memory_copies=(40, 80e6, 0),
              rest=(500, 700e6, 690_000),
          ),
      ),
      tracker_off=dict(
          bytes_accessed=1_000e6,
          hlo=_hlo(memory_copies=(30, 70e6, 0), rest=(510, 1_000e6, 700_000)),
      ),
      single_replica=dict(hlo=_hlo(rest=(100, 10e6, 500_000))),
  )
  hlo.derive(r)
  assert r['rest_bytes'] == pytest.approx(30e6)  # 130 MB more, 100 of them the evaluation
  assert r['share_at_every_steps']['10'] == pytest.approx((30e6 + 10e6) / 1_000e6)
  assert r['estimated_cycles_on'] == 1_000_000 and r['estimated_cycles_off'] == 700_000
  assert r['rest_cycles'] == 1_000_000 - 700_000 - 300_000
  assert r['cycles_share_at_every_steps']['20'] == pytest.approx(15_000 / 700_000)
  assert r['replica_speedup_cycles'] == pytest.approx(8 * 500_000 / 1_000_000)
  assert r['hlo_delta']['memory_copy_count'] == 10
  assert r['hlo_delta']['step_without_copies'] == pytest.approx(3e6)
  text = hlo.table({'s': r})
  row = '| s | v5e:1x1, 128 | 1,000.0 / 1,130.0 | 100.0 | 30.0 | 16 / 1 (3.0) | +10, +10.0 | +3.0 |'
  assert row in text
  assert '4.00x' in text


def test_cycles_summary_ranks_instructions_and_finds_convolutions():
  summary = hlo_text.cycles_summary(_TEXT, top=2)
  assert summary['total'] == 1965 + 35 and summary['convolutions'] == 0
  assert [(t['name'], t['cycles']) for t in summary['top']] == [('f', 1965), ('neg', 35)]
  assert summary['top'][1]['op_name'] == 'jit(s)/jvp(Net)/neg'
  # A fusion whose body holds a (vmapped) convolution counts as one.
  conv = _TEXT.replace('jvp(Net)/add', 'vmap(jvp(Net))/vmap(conv_general_dilated)')
  assert hlo_text.cycles_summary(conv)['convolutions'] == 1965


_LOOPS = """HloModule loops

%body (b0: f32[16]) -> f32[16] {
  %b0 = f32[16]{0} parameter(0)
  ROOT %neg = f32[16]{0} negate(%b0), backend_config={"estimated_cycles":"10"}
}

%cond (c0: f32[16]) -> pred[] {
  %c0 = f32[16]{0} parameter(0)
  ROOT %t = pred[] constant(true)
}

%body2 (d0: f32[16]) -> f32[16] {
  %d0 = f32[16]{0} parameter(0)
  ROOT %abs = f32[16]{0} abs(%d0), backend_config={"estimated_cycles":"3"}
}

%body3 (h0: (s32[], f32[16])) -> (s32[], f32[16]) {
  %h0 = (s32[], f32[16]{0}) parameter(0)
  %v = f32[16]{0} get-tuple-element(%h0), index=1
  %sq = f32[16]{0} multiply(%v, %v), backend_config={"estimated_cycles":"2"}
  %i = s32[] get-tuple-element(%h0), index=0
  ROOT %next = (s32[], f32[16]{0}) tuple(%i, %sq)
}

%less_than_4 (l0: (s32[], f32[16])) -> pred[] {
  %four = s32[]{:T(128)} constant(4)
  %l0 = (s32[]{:T(128)}, f32[16]{0}) parameter(0)
  %j = s32[]{:T(128)} get-tuple-element(%l0), index=0
  ROOT %lt = pred[]{:T(512)} compare(%j, %four), direction=LT, metadata={op_name="jit(f)/while/cond/lt"}
}

ENTRY %main (w: f32[16]) -> f32[16] {
  %w = f32[16]{0} parameter(0)
  %known = f32[16]{0} while(%w), condition=%cond, body=%body, backend_config={"known_induction_variable":{"tuple_index":"0"},"known_trip_count":{"n":"5"}}
  %unknown = f32[16]{0} while(%known), condition=%cond, body=%body2
  %zero = s32[] constant(0)
  %start = (s32[], f32[16]{0}) tuple(%zero, %unknown)
  %tpu = (s32[], f32[16]{0}) while(%start), condition=%less_than_4, body=%body3
  ROOT %out = f32[16]{0} get-tuple-element(%tpu), index=1
}
"""  # noqa: E501


def test_a_loop_body_counts_once_per_known_trip():
  found = {i.name: i for i in hlo_text.instructions(_LOOPS)}
  assert (found['neg'].cycles, found['neg'].bytes) == (5 * 10, 5 * 2 * 16 * 4)
  assert (found['abs'].cycles, found['abs'].bytes) == (3, 2 * 16 * 4)  # trip count unknown
  # The TPU compiler writes no trip count: read from the condition `i < 4`.
  assert (found['sq'].cycles, found['sq'].bytes) == (4 * 2, 4 * 3 * 16 * 4)
  assert hlo_text.estimated_cycles(_LOOPS) == 50 + 3 + 8


def test_a_compiled_fori_loop_is_read_with_its_trip_count():
  def f(x):
    return jax.lax.fori_loop(0, 7, lambda i, x: jnp.sin(x) * 2, x)

  text = jax.jit(f).lower(jnp.ones(1024)).compile().as_text()
  body = [i for i in hlo_text.instructions(text) if i.bytes >= 7 * 2 * 1024 * 4]
  assert body, "the loop body's fusion should count 7 times its 8 KB"

"""Reading a compiled program's optimized HLO text (`compiled.as_text()`), for the TPU benchmarks.

A program's top-level instructions are those of its ENTRY computation and of the computations
it reaches through while / conditional / call (both branches of a conditional); a fusion's
body is read only for the names of the ops fused into it. An instruction in a loop body counts
as many times as the loop runs where its trip count is known (fori_loop, lax.map: `_trip_count`),
once where it is not. For each one:

- its bytes: operand plus output bytes, every array of a tuple counted. The compiler's
  `cost_analysis()['bytes accessed']` is close to this sum, not equal to it;
- its `estimated_cycles`: the TPU compiler writes its cost model's cycle estimate for most
  fusions and copies into the instruction's backend_config. Ops without one (collectives,
  async copy pairs, scalar bookkeeping) count 0, so a sum is a lower bound on a step's cycles.
  Unlike a roofline it charges each op for the tiles it occupies, so a small op (a 32x32
  image with 64 channels, a 1x17 vector) costs what it costs on the chip, not its flops at
  peak.
"""

import math
import re
from typing import Iterator, NamedTuple, Tuple

_DTYPE_BYTES = {
    'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2,
    's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8,
}  # fmt: skip
_ARRAY = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')
_INSTRUCTION = re.compile(r'^(?:ROOT )?%(\S+) = (.*?) ([a-z][\w\-]*)\((.*)$')
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_S32_CONSTANT = re.compile(r'= s32\[\]\S* constant\((\d+)\)')
# No work of their own: names, views and constants.
_FREE = frozenset({'parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast',
                   'after-all', 'partition-id', 'replica-id'})  # fmt: skip
_CONTROL = frozenset({'while', 'conditional', 'call'})


class Instruction(NamedTuple):
  name: str
  op: str  # 'fusion', 'copy-start', 'convolution', ...
  bytes: int  # operands + output, times the loop's trip count inside a loop
  cycles: int  # the compiler's estimated_cycles (likewise); 0 where it gives none
  op_names: Tuple[str, ...]  # metadata op_name of the op, or of every op fused into it


def shape_bytes(shape: str) -> int:
  """'(f32[8,56]{1,0}, bf16[4]{0})' -> 8*56*4 + 4*2: every array in a (tuple) shape."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    total += math.prod(int(d) for d in dims.split(',') if d) * _DTYPE_BYTES[dtype]
  return total


def _computations(text: str):
  """{name: [instruction lines]} and the ENTRY computation's name."""
  comps, entry, current = {}, None, None
  for line in text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith('{') and '%' in line:
      current = re.match(r'^(?:ENTRY )?%(\S+)', line).group(1)
      comps[current] = []
      entry = current if line.startswith('ENTRY') else entry
    elif line.startswith('}'):
      current = None
    elif current is not None and line.strip():
      comps[current].append(line.strip())
  if entry is None:
    raise ValueError('No ENTRY computation in the HLO text: pass compiled.as_text().')
  return comps, entry


def _trip_count(rest: str, comps: dict) -> int:
  """A while loop's trip count: the compiler's `known_trip_count` where it writes one (XLA:CPU),
  else read from a condition `i < N` on a constant N, the form fori_loop / lax.map / scan take
  from 0 in steps of 1 (the TPU compiler writes no trip count); 1 where neither is found."""
  known = _TRIP_COUNT.search(rest)
  if known:
    return int(known.group(1))
  condition = re.search(r'condition=%([\w.\-]+)', rest)
  lines = comps.get(condition.group(1), ()) if condition else ()
  constants = [m.group(1) for m in map(_S32_CONSTANT.search, lines) if m]
  root = [line for line in lines if line.startswith('ROOT ')]
  if len(constants) == 1 and root and ' compare(' in root[0] and 'direction=LT' in root[0]:
    return int(constants[0])
  return 1


def instructions(text: str) -> Iterator[Instruction]:
  """The program's top-level instructions that do work (module docstring)."""
  comps, entry = _computations(text)
  todo, seen = [(entry, 1)], set()  # (computation, how many times a step runs it)
  while todo:
    name, runs = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    shapes = {}
    for line in comps[name]:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      result, shape, op, rest = m.groups()
      shapes[result] = shape
      if op in _CONTROL:
        inner = runs * (_trip_count(rest, comps) if op == 'while' else 1)
        todo.extend((c, inner) for c in re.findall(r'%([\w.\-]+)', rest) if c in comps)
        continue
      if op in _FREE:
        continue
      operands = re.findall(r'%([\w.\-]+)', rest.split('), ')[0])
      nbytes = shape_bytes(shape) + sum(shape_bytes(shapes.get(o, '')) for o in operands)
      cycles = _CYCLES.search(rest)
      callee = re.search(r'calls=%([\w.\-]+)', rest)
      body = '\n'.join(comps.get(callee.group(1), ())) if callee else rest
      yield Instruction(
          result,
          op,
          nbytes * runs,
          int(cycles.group(1)) * runs if cycles else 0,
          tuple(re.findall(r'op_name="([^"]+)"', body)),
      )


def estimated_cycles(text: str) -> int:
  """The sum of the compiler's estimated_cycles over the program's top-level instructions."""
  return sum(i.cycles for i in instructions(text))


def is_convolution(instruction: Instruction) -> bool:
  """A convolution, or a fusion with one inside (a vmapped convolution's batching rule keeps
  the primitive's name: 'vmap(conv_general_dilated)')."""
  return instruction.op == 'convolution' or any(
      'conv_general_dilated' in name for name in instruction.op_names
  )


def cycles_summary(text: str, top: int = 10) -> dict:
  """Where a program's estimated cycles go: the total, the part in convolutions, and the `top`
  instructions by cycles as [{'name', 'op', 'cycles', 'bytes', 'op_name'}] (op_name: the first
  fused op's, the last 100 characters)."""
  found = list(instructions(text))
  ranked = sorted(found, key=lambda i: i.cycles, reverse=True)[:top]
  return dict(
      total=sum(i.cycles for i in found),
      convolutions=sum(i.cycles for i in found if is_convolution(i)),
      top=[
          dict(
              name=i.name,
              op=i.op,
              cycles=i.cycles,
              bytes=i.bytes,
              op_name=(i.op_names[0] if i.op_names else '')[-100:],
          )
          for i in ranked
      ],
  )

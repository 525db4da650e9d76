"""The documentation's links: every relative link in the README and the Markdown pages it links
(docs/, benchmarks/README.md, results/README.md) points to a file that exists, and a link to a
heading (`page.md#heading`) to a heading of that page; the README stays a ten-minute read."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# [text](target), leaving out code: fenced blocks and `inline code` are removed first.
LINK = re.compile(r'\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```.*?^```', re.S | re.M)
CODE = re.compile(r'`[^`\n]*`')


def _pages():
  pages = ['README.md', 'benchmarks/README.md', 'results/README.md']
  pages += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
  return pages


def _links(text):
  text = FENCE.sub('', text)
  text = '\n'.join(line for line in text.split('\n') if not line.startswith('    '))
  return LINK.findall(CODE.sub('', text))


def _anchors(text):
  """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
  out = set()
  for line in FENCE.sub('', text).split('\n'):
    m = re.match(r'#{1,6} (.*)', line)
    if m:
      title = m.group(1).strip().lower()
      out.add(re.sub(r'[^\w\- ]', '', title).replace(' ', '-'))
  return out


def test_every_relative_link_resolves():
  bad = []
  for page in _pages():
    with open(os.path.join(ROOT, page), encoding='utf-8') as f:
      text = f.read()
    for target in _links(text):
      if re.match(r'[a-z][a-z0-9+.-]*:', target):
        continue  # http:, https:, mailto:
      path, _, anchor = target.partition('#')
      full = (
          os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path))
          if path
          else (os.path.join(ROOT, page))
      )
      if not os.path.exists(full):
        bad.append(f'{page}: {target} (no such path)')
      elif anchor and full.endswith('.md'):
        with open(full, encoding='utf-8') as f:
          if anchor not in _anchors(f.read()):
            bad.append(f'{page}: {target} (no such heading)')
  assert not bad, '\n'.join(bad)


def test_readme_is_short_and_links_every_docs_page():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    text = f.read()
  assert len(text.split('\n')) <= 400
  linked = set(_links(text))
  for page in _pages():
    if page.startswith('docs/'):
      assert page in linked, f'README.md does not link {page}'

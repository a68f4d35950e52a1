"""The shape of the house (STYLE.md): imports only point down. Every import of every project file is
read from its syntax tree, function-level ones included; tests aside. Fails on an import circle, on
model.py importing any project module, or on a file at the root that is neither a method file nor an
entry point."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('components', 'scripts', 'data', 'toy', 'course')
# the root: what a learner reads the method from, and the entry points
ROOT_FILES = {'model.py', 'kl.py', 'chunked.py', 'policy_gradient.py', 'sampling.py', 'rollout.py',
              'supervised.py', 'onpolicy.py', 'dataset.py', 'prune.py', 'train.py', 'sample.py', 'evaluate.py',
              'configurator.py'}


def project_files():
    """{module name: path} of every project .py file outside tests/ (data/x/prepare.py is data.x.prepare)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if not d.startswith(('.', '_')) and d not in ('tests', 'out', 'venv')]
        if rel != '.' and rel.split(os.sep)[0] not in PACKAGES:
            continue
        for f in filenames:
            if f.endswith('.py'):
                parts = [] if rel == '.' else rel.split(os.sep)
                name = '.'.join(parts + [f[:-3]])
                out[name[:-len('.__init__')] if name.endswith('.__init__') else name] = os.path.join(dirpath, f)
    return out


def imports_of(path, modules):
    """The project modules `path` imports anywhere in its body (a name imported from a package counts as
    the submodule it names, when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition('.')[0]
            if n:
                found.add(n)
    return found


def import_graph():
    modules = project_files()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def find_cycle(graph):
    """One import circle as a list of modules [a, b, ..., a], or None."""
    state = {}

    def visit(m, stack):
        state[m] = 'open'
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 'open':
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n, stack + [n])
                if found:
                    return found
        state[m] = 'done'
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [m])
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_the_cycle_finder_sees_a_function_level_circle():
    """find_cycle and imports_of on a made-up pair whose second import hides inside a function."""
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}
    assert find_cycle(graph) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None
    import tempfile
    with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
        f.write("import os\n\ndef late():\n    from components.hf import export_hf\n    import model\n")
    try:
        assert imports_of(f.name, {'components', 'components.hf', 'model', 'kl'}) == {'components.hf', 'model'}
    finally:
        os.remove(f.name)


def test_model_imports_torch_alone():
    assert import_graph()['model'] == set()


def test_the_root_holds_the_method_and_the_entry_points_only():
    extra = sorted(f for f in os.listdir(ROOT) if f.endswith('.py') and f not in ROOT_FILES)
    assert extra == [], f"{extra} at the root: plumbing goes in components/, tools in scripts/"


def test_no_function_over_150_lines_and_no_file_far_over_500():
    """STYLE.md: no file over ~500 lines, a loop that reads top to bottom (no 300-line function)."""
    long_functions, long_files = [], []
    for name, path in project_files().items():
        text = open(path, encoding='utf-8').read()
        if text.count('\n') > 550:
            long_files.append((name, text.count('\n')))
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 150:
                long_functions.append((name, node.name, node.end_lineno - node.lineno + 1))
    assert long_files == [] and long_functions == [], (long_files, long_functions)

# The two commands that matter: `make demo` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit engines integration chaos cluster-binaries crd clean
.PHONY: lint-charts lint-shell lint-dockerfiles e2e e2e-kind e2e-kind-if-warm kind-down demo-down

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,worker]'
	touch $@

demo: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# kind's end-to-end run joins `make test` when its cache is warm (or PARASERVE_KIND=1), and says in
# one line why not otherwise: cold, it builds a node image and images for longer than CI allows.
test: lint typecheck unit engines integration e2e-kind-if-warm

lint: $(BIN)/.installed lint-charts lint-shell lint-dockerfiles
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# The chart and manifest tests render with the cluster build's helm and kubectl.
unit: cluster-binaries
	$(BIN)/pytest tests/unit -q

# The real engines, each in its own cached venv (installed here when cold: vLLM's CPU build
# ~4 min, SGLang ~30 min), and the offline checks of every rendered command through the
# engines' own argument parsing and configuration.
engines: $(BIN)/.installed
	$(BIN)/python -m e2e.engines install vllm
	$(BIN)/python -m e2e.engines install sglang
	$(BIN)/pytest tests/engines -q

cluster-binaries: $(BIN)/.installed
	$(BIN)/python -m e2e.cluster build

# The chaos suite (tests marked chaos: operator kills, control-plane restarts, a frozen leader,
# repair, slow metrics, fuzzed specs) runs within `make test`, in the unit and integration
# sessions; `make chaos` runs only it. Its figures are printed whether it passes or not.
integration: cluster-binaries
	$(BIN)/pytest tests/integration -q

chaos: cluster-binaries
	$(BIN)/pytest tests/unit tests/integration -q -m chaos

# The CRD is generated from the models; the chart carries a copy (unit tests fail on drift).
crd: $(BIN)/.installed
	$(BIN)/paraserve crd > crds/inferencedeployments.paraserve.dev.yaml
	cp crds/inferencedeployments.paraserve.dev.yaml charts/paraserve/crds/

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# -- install: chart, manifests, images, end-to-end (docs/install.md) --------------------------

SHELL_SCRIPTS := .ci/run examples/demo.sh $(wildcard e2e/kind/*.sh) e2e/kind/runc-caps \
	e2e/kind/node/files/kind/bin/paraserve-cni.sh

# helm comes from the local cluster's build, so this also builds the cluster binaries.
lint-charts: cluster-binaries
	"$$($(BIN)/python -c 'from e2e.install import tool; print(tool("helm"))')" lint --strict charts/paraserve

lint-shell: $(BIN)/.installed
	$(BIN)/shellcheck -x $(SHELL_SCRIPTS)

lint-dockerfiles: $(BIN)/.installed
	$(BIN)/hadolint operator/Dockerfile images/worker.Dockerfile

# The end-to-end suite on the local control plane (e2e/tests; KUBECONFIG=… for another cluster).
e2e: cluster-binaries
	$(BIN)/pytest e2e/tests -q

# The same suite on kind with fake GPUs: a Docker engine (installed and started here when none
# runs), the node image assembled offline, a control plane and two GPU workers, both images, the
# chart; all torn down afterwards (PARASERVE_KIND_KEEP=1 keeps it; `make kind-down` stops it).
e2e-kind: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash e2e/kind/e2e.sh

e2e-kind-if-warm: $(BIN)/.installed
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash e2e/kind/if-warm.sh

kind-down: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash e2e/kind/down.sh

demo-down: $(BIN)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh down

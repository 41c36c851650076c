# Every target sets itself up: a virtual environment in .venv with the
# project and its test tools, and tshark from Debian's packages.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUT    ?= out

.PHONY: all setup tshark demo pcaps test bench clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

setup: $(VENV)/.installed tshark

tshark:
	@command -v tshark >/dev/null 2>&1 || { \
	  echo "installing tshark (Debian package)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null; }

EXAMPLES := quickstart nodeport headless-dns no-endpoints mtu failover bulk-traffic

demo: setup
	mkdir -p $(OUT)
	$(VENV)/bin/emu run examples/quickstart/scenario.yaml -o $(OUT)/quickstart.pcapng

pcaps: setup  # regenerate the golden captures (tests compare them byte for byte)
	rm -f pcaps/*.pcapng
	for x in $(EXAMPLES); do $(VENV)/bin/emu run examples/$$x/scenario.yaml -o pcaps/$$x.pcapng > /dev/null || exit 1; done

test: setup
	$(PY) -m pytest -q tests
	EMU_BENCH_QUICK=1 $(PY) -m pytest -q bench --benchmark-disable -p no:cacheprovider

bench: setup
	$(PY) -m pytest -q bench --benchmark-only --benchmark-sort=name

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .hypothesis .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

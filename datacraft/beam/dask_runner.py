"""Beam on dask.distributed: Beam's `DaskRunner` with the fixes a datacraft graph needs.

Measured with Beam 2.77.0 and dask / distributed 2026.8.0 (`TESTED_BEAM`), the stock runner
(`apache_beam.runners.dask.dask_runner.DaskRunner`) loses data; docs/dask-runner-bug.md is the
upstream report. `DaskRunner` below replaces only its graph translation (`run_pipeline`):

1. tagged outputs: the stock ParDo puts every output of every tag into one bag, and each consumer
   reads the producing *transform's* bag — a `with_outputs` consumer gets the wrong rows (or none).
   Here a ParDo's bag holds (tag, value) pairs and each output PCollection is its own filtered bag.
2. `finish_bundle` outputs: the stock bundle function collects its results before calling
   `finish_bundle`, so whatever that emits (the shard writers' file lists) is dropped. Here they are kept.
3. only the last transform was computed (`bags.values()[-1]`): a graph with several sinks (kept
   rows, dropped rows, the ledger) ran one of them. Here every PCollection nobody consumes is computed.
4. side inputs were computed by a nested `list(bag)` inside every task (the upstream recomputed per
   partition, outside the task graph). Here a side input is one task of the graph, read by every partition.
5. the output receivers were pickled into the graph once and shared by every partition's call (threads
   of one worker append to one list); here each bundle builds its own.
6. `DoFn.setup` / `teardown` ran around every partition, so a stage's model (shared per process and
   closed by its last holder) was loaded again for each bundle. Here a worker thread sets a DoFn up
   once per run and reuses it for that run's bundles; it is torn down when the next run's first
   bundle arrives on that worker (Beam calls teardown best-effort only).
7. no dask graph optimization where a bag is handed on: `to_delayed()` (the side inputs; Beam's
   CombineGlobally reads one) and `dask.optimize` each fuse the producing ParDo into their own copy,
   so a stage feeding kept / dropped / stats ran once per output. The graph is computed as built.

`Create` makes two partitions per worker (at most one per element) unless `--dask_npartitions` /
`--dask_partition_size` say otherwise, so read tasks spread over workers (the stock default packs
128 elements in one partition: one worker reads every file).

Shorthand `--runner=dask` starts a `distributed.LocalCluster` of `--dask_workers` processes (one
thread each) for the run and closes it after. Output paths must be visible to every worker (one host,
or a shared file system): workers write the shard files themselves.
"""

from __future__ import annotations

import os
import threading
import typing as t
import uuid

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask import dask_runner as stock
from apache_beam.runners.dask import transform_evaluator as te
from apache_beam.runners.dask.overrides import _Create, dask_overrides
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindows

#: Beam versions whose DaskRunner these fixes were written for and tested with
TESTED_BEAM = ("2.77.", "2.78.")


class DatacraftDaskOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: t.Any) -> None:
        parser.add_argument("--dask_workers", type=int, default=None, help="--runner=dask: worker processes of the local cluster (default: CPU count)")


class _Collect(Receiver):
    """Receives one tag's windowed values into a shared list as (tag, value)."""

    def __init__(self, tag: str | None, out: list[tuple[str | None, t.Any]]) -> None:
        self.tag, self.out = tag, out

    def receive(self, windowed_value: t.Any) -> None:
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, out: list[tuple[str | None, t.Any]]) -> None:
        super().__init__()
        self.out = out

    def __missing__(self, tag: str | None) -> _Collect:
        self[tag] = _Collect(tag, self.out)
        return self[tag]


_LIVE: dict[tuple[str, str, int], beam.DoFn] = {}  # (run, transform, thread) → a set-up DoFn on this worker
_LIVE_LOCK = threading.Lock()


def _set_up(run: str, label: str, fn: beam.DoFn) -> tuple[beam.DoFn, bool]:
    """This thread's DoFn of `label` for `run`, and whether it still needs `setup` (the first bundle).
    DoFns of an earlier run on this worker are torn down first."""
    key = (run, label, threading.get_ident())
    with _LIVE_LOCK:
        old = [_LIVE.pop(k) for k in [k for k in _LIVE if k[0] != run]]
        live = _LIVE.setdefault(key, fn)
    for stale in old:
        stale.teardown()
    return live, live is fn


def _run_bundle(items: t.Iterable[t.Any], run: str, fn: beam.DoFn, window_fn: t.Any, label: str, args: list[t.Any], kwargs: dict[str, t.Any], views: list[tuple[t.Any, t.Any]], *side_values: list[t.Any]) -> list[tuple[str | None, t.Any]]:
    """One dask partition = one Beam bundle: start, process each item, finish (its outputs kept), on
    this worker's set-up DoFn. Returns every output as (tag, value); tag None is the main output."""
    out: list[tuple[str | None, t.Any]] = []
    receivers = _Receivers(out)
    handler = _OutputHandler(window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers, per_element_output_counter=None, output_batch_converter=None, process_yields_batches=False, process_batch_yields_elements=False)
    side_inputs = [
        SideInputMap(view_type, options, [GlobalWindows.windowed_value(v) for v in values])
        for (view_type, options), values in zip(views, side_values, strict=True)
    ]
    fn, first = _set_up(run, label, fn)
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn), handler, context=DoFnContext(label, state=None), side_inputs=side_inputs,
        input_args=args, input_kwargs=kwargs, user_state_context=None, bundle_finalizer_param=beam.DoFn.BundleFinalizerParam(),
    )
    if first:
        invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(GlobalWindows.windowed_value(item))
    invoker.invoke_finish_bundle()
    return out


def _whole(*partitions: list[t.Any]) -> list[t.Any]:
    return [x for part in partitions for x in part]


def _tagged(tag: str | None) -> t.Callable[[tuple[str | None, t.Any]], bool]:
    return lambda item: item[0] == tag


def _value(item: tuple[str | None, t.Any]) -> t.Any:
    return item[1]


class _Translate(PipelineVisitor):
    """Beam leaf transforms → dask bags, one bag per PCollection."""

    def __init__(self, bag_kwargs: dict[str, t.Any], workers: int = 1) -> None:
        self.bag_kwargs, self.workers = bag_kwargs, workers
        self.bags: dict[pvalue.PCollection, t.Any] = {}
        self.consumed: set[pvalue.PCollection] = set()
        self.run = uuid.uuid4().hex

    def visit_transform(self, node: AppliedPTransform) -> None:
        inputs = [i for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        self.consumed.update(inputs)
        self.consumed.update(si.pvalue for si in node.side_inputs)
        transform = node.transform
        if type(transform) is beam.ParDo:  # exactly: _GroupAlsoByWindow (a ParDo) is the stock NoOp
            self._outputs(node, self._pardo(node, self.bags[inputs[0]]))
            return
        if isinstance(transform, _Create):
            bag = self._create(transform)
        elif type(transform) in te.TRANSLATIONS:
            op = te.TRANSLATIONS[type(transform)](node, bag_kwargs=self.bag_kwargs)
            bag = op.apply([self.bags[i] for i in inputs] if isinstance(op, te.Flatten) else self.bags[inputs[0]] if inputs else None)
        else:  # the stock NoOp (e.g. Reshuffle): the input as it is
            bag = self.bags[inputs[0]]
        for pc in node.outputs.values():
            self.bags[pc] = bag

    def _create(self, transform: _Create) -> t.Any:
        from dask import bag as db

        values = list(transform.values)
        if self.bag_kwargs:
            return db.from_sequence(values, **self.bag_kwargs)
        # two partitions a worker: a partition per element (1 read task each) multiplies the tasks of
        # every shuffle after it (20 elements: 2,534 tasks, 34 s; 2 partitions: 86 tasks, 5 s)
        return db.from_sequence(values, npartitions=max(1, min(len(values), 2 * self.workers)))

    def _pardo(self, node: AppliedPTransform, bag: t.Any) -> t.Any:
        from dask import delayed

        transform = t.cast(beam.ParDo, node.transform)
        args, kwargs = transform.raw_side_inputs
        main = next(iter(node.main_inputs.values()))
        window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
        views = [(type(si), si._view_options()) for si in node.side_inputs]
        sides = [delayed(_whole)(*self.bags[si.pvalue].to_delayed(optimize_graph=False)) for si in node.side_inputs]
        return bag.map_partitions(_run_bundle, self.run, transform.fn, window_fn, node.full_label, list(args), kwargs, views, *sides)

    def _outputs(self, node: AppliedPTransform, tagged: t.Any) -> None:
        for tag, pc in node.outputs.items():  # the main output's tag is None
            self.bags[pc] = tagged.filter(_tagged(tag)).map(_value)

    def leaves(self) -> list[t.Any]:
        """The bags of every PCollection no transform reads (the sinks), each once."""
        seen: dict[int, t.Any] = {}
        for pc, bag in self.bags.items():
            if pc not in self.consumed:
                seen.setdefault(id(bag), bag)
        return list(seen.values())


class _Result(stock.DaskRunnerResult):
    cluster: t.Any = None

    def wait_until_finish(self, duration: t.Any = None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self.cluster is not None:
                self.client.close()
                self.cluster.close()


def check_beam_version() -> None:
    if not beam.__version__.startswith(TESTED_BEAM):
        raise RuntimeError(f"datacraft's DaskRunner fixes were tested with Beam {', '.join(v + 'x' for v in TESTED_BEAM)}; this is Beam {beam.__version__}")


class DaskRunner(stock.DaskRunner):
    """Beam's DaskRunner with the translation fixes above; `local=True`: a LocalCluster for the run."""

    def __init__(self, local: bool = False) -> None:
        super().__init__()
        self.local = local

    def run_pipeline(self, pipeline: t.Any, options: PipelineOptions) -> stock.DaskRunnerResult:
        import dask.distributed as ddist

        check_beam_version()
        dask_options = options.view_as(stock.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = stock.DaskOptions._extract_bag_kwargs(dask_options)
        cluster = None
        if self.local and not dask_options.get("address") and not dask_options.get("scheduler_file"):
            workers = options.view_as(DatacraftDaskOptions).dask_workers or os.cpu_count() or 1
            cluster = ddist.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            dask_options["address"] = cluster
        client = ddist.Client(**dask_options)
        pipeline.replace_all(dask_overrides())
        visitor = _Translate(bag_kwargs, max(1, len(client.scheduler_info().get("workers", {}))))
        pipeline.visit(visitor)
        # optimized apart, each leaf would get its own fused copy of the ParDos it reads (fix 7)
        futures = client.compute(visitor.leaves(), optimize_graph=False)
        result = _Result(client, futures)
        result.cluster = cluster
        return result

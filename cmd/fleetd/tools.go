package main

// The queue tools: fleetd submit, status, requeue and inspect. They use the
// daemon's configuration (bucket, prefix, queue, endpoint) and its store.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cellos/fleetd/internal/gate"
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/queue"
)

// maxLeaseBytes bounds a lease read; leases are about 300 bytes.
const maxLeaseBytes = 64 << 10

// tool is one subcommand.
type tool struct {
	flags func(*flag.FlagSet, *toolFlags)
	run   func(ctx context.Context, t *toolEnv, args []string) (any, error)
	text  func(w io.Writer, result any)
}

type toolFlags struct {
	json      bool
	id        string
	replace   bool
	failed    bool
	olderThan time.Duration
}

type toolEnv struct {
	cfg    Config
	store  *queue.Store
	proto  *protocol.Protocol
	layout queue.Layout
	flags  toolFlags
}

var tools = map[string]tool{
	"submit":  {flags: submitFlags, run: submit, text: submitText},
	"status":  {run: status, text: statusText},
	"requeue": {flags: requeueFlags, run: requeue, text: requeueText},
	"inspect": {run: inspect, text: inspectText},
}

// runTool runs a subcommand and returns the exit code: 0 ok, 1 error, 2 usage.
func runTool(t tool, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	var tf toolFlags
	cfg, positional, err := parseConfig(args, getenv, stdout, func(fs *flag.FlagSet) {
		fs.BoolVar(&tf.json, "json", false, "print JSON")
		if t.flags != nil {
			t.flags(fs, &tf)
		}
	})
	if err != nil {
		fmt.Fprintf(stderr, "fleetd: %v\n", err)
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	}
	if cfg.help || cfg.ShowVersion {
		if cfg.ShowVersion {
			fmt.Fprintln(stdout, versionString())
		}
		return 0
	}
	m := metrics.New(1, version, shortRevision())
	client, err := newS3Client(cfg, getenv, m)
	if err != nil {
		fmt.Fprintf(stderr, "fleetd: %v\n", err)
		return 1
	}
	store := queue.New(client, cfg.Bucket, s3Policy(cfg, m))
	layout := queue.NewLayout(cfg.Prefix, cfg.QueueName)
	proto := protocol.New(protocol.Config{Layout: layout, Node: cfg.NodeID, TTL: cfg.LeaseTTL, MaxAttempts: cfg.MaxAttempts,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}, store)
	env := &toolEnv{cfg: cfg, store: store, proto: proto, layout: layout, flags: tf}
	result, err := t.run(context.Background(), env, positional)
	if result != nil {
		if tf.json {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(result)
		} else {
			t.text(stdout, result)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "fleetd: %v\n", err)
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	}
	return 0
}

// --- submit ---

func submitFlags(fs *flag.FlagSet, tf *toolFlags) {
	fs.StringVar(&tf.id, "id", "", "spec id (one file only; default: spec.id, else the file name)")
	fs.BoolVar(&tf.replace, "replace", false, "overwrite a pending or in-flight spec of the same id")
}

type submitted struct {
	ID  string `json:"id"`
	Key string `json:"key"`
}

func submit(ctx context.Context, t *toolEnv, files []string) (any, error) {
	if len(files) == 0 {
		return nil, usagef("submit: no FILE given")
	}
	if t.flags.id != "" && len(files) > 1 {
		return nil, usagef("submit: --id needs exactly one FILE")
	}
	// Check every file before uploading any, so bad input changes nothing.
	type spec struct {
		id   string
		body []byte
	}
	var specs []spec
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("submit: %w", err)
		}
		if int64(len(body)) > t.cfg.MaxSpecBytes {
			return nil, fmt.Errorf("submit %s: %d bytes, over CELLOS_FLEET_MAX_SPEC_BYTES=%d", f, len(body), t.cfg.MaxSpecBytes)
		}
		view, err := gate.Parse(body)
		if err != nil {
			return nil, fmt.Errorf("submit %s: %w", f, err)
		}
		var doc map[string]json.RawMessage
		_ = json.Unmarshal(body, &doc) // gate.Parse proved it is an object
		if s := doc["spec"]; len(s) == 0 || s[0] != '{' {
			return nil, fmt.Errorf("submit %s: no \"spec\" object", f)
		}
		id := t.flags.id
		if id == "" {
			id = view.ID
		}
		if id == "" {
			id = strings.TrimSuffix(filepath.Base(f), ".json")
		}
		if err := t.layout.CheckID(id); errors.Is(err, queue.ErrIDTooLong) {
			// fleetd leaves such a key alone: refuse it here rather than let it sit.
			return nil, fmt.Errorf("submit %s: spec id of %d bytes is too long for this queue: %w", f, len(id), err)
		}
		if _, ok := t.layout.ID(queue.Pending, t.layout.Key(queue.Pending, id)); !ok || strings.ContainsAny(id, " \t\n") {
			return nil, fmt.Errorf("submit %s: %q is not a usable spec id (no '/', no spaces)", f, id)
		}
		specs = append(specs, spec{id, body})
	}
	var done []submitted
	for _, s := range specs {
		if !t.flags.replace {
			for _, st := range []queue.State{queue.Pending, queue.Claimed} {
				_, err := t.store.Head(ctx, t.layout.Key(st, s.id))
				if err == nil {
					return done, fmt.Errorf("submit: spec %s is already in %s/; use --replace to overwrite it", s.id, st)
				}
				if !errors.Is(err, queue.ErrNotFound) {
					return done, fmt.Errorf("submit %s: %w", s.id, err)
				}
			}
		}
		key := t.layout.Key(queue.Pending, s.id)
		if _, err := t.store.Put(ctx, key, s.body, queue.PutOptions{IfAbsent: !t.flags.replace}); err != nil {
			if errors.Is(err, queue.ErrPrecondition) {
				err = fmt.Errorf("spec %s was submitted meanwhile; use --replace to overwrite it", s.id)
			}
			return done, fmt.Errorf("submit: %w", err)
		}
		done = append(done, submitted{ID: s.id, Key: key})
	}
	return done, nil
}

func submitText(w io.Writer, result any) {
	for _, s := range result.([]submitted) {
		fmt.Fprintf(w, "submitted %s as %s\n", s.ID, s.Key)
	}
}

// --- status ---

type statusResult struct {
	Counts           map[string]int `json:"counts"`
	OldestPendingAge string         `json:"oldest_pending_age,omitempty"`
	InFlight         []inFlight     `json:"in_flight"`
}

type inFlight struct {
	ID       string `json:"id"`
	Node     string `json:"node"`
	Attempts int    `json:"attempts"`
	State    string `json:"state"`
	LeaseAge string `json:"lease_age"`
}

func status(ctx context.Context, t *toolEnv, args []string) (any, error) {
	if len(args) > 0 {
		return nil, usagef("status: unexpected argument %q", args[0])
	}
	res := statusResult{Counts: map[string]int{}}
	for _, st := range []queue.State{queue.Pending, queue.Claimed, queue.Completed, queue.Failed} {
		var oldest time.Duration
		err := t.store.List(ctx, t.layout.Dir(st), func(p queue.Page) error {
			for _, o := range p.Objects {
				if _, ok := t.layout.ID(st, o.Key); ok {
					res.Counts[string(st)]++
					oldest = max(oldest, p.ServerTime.Sub(o.LastModified))
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		if st == queue.Pending && res.Counts[string(st)] > 0 {
			res.OldestPendingAge = oldest.Round(time.Second).String()
		}
	}
	var leases []queue.Object
	err := t.store.List(ctx, t.layout.Dir(queue.Leases), func(p queue.Page) error {
		leases = append(leases, p.Objects...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	for _, o := range leases {
		id, ok := t.layout.ID(queue.Leases, o.Key)
		if !ok {
			continue
		}
		l, err := t.store.Get(ctx, o.Key, maxLeaseBytes)
		if errors.Is(err, queue.ErrNotFound) {
			continue // finished since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		body, _ := protocol.ParseLease(l.Body) // an unreadable lease shows empty fields
		res.InFlight = append(res.InFlight, inFlight{ID: id, Node: body.Node, Attempts: body.Attempts, State: body.State,
			LeaseAge: l.ServerTime.Sub(l.LastModified).Round(time.Second).String()})
	}
	return res, nil
}

func statusText(w io.Writer, result any) {
	r := result.(statusResult)
	fmt.Fprintf(w, "pending %d  claimed %d  completed %d  failed %d\n",
		r.Counts["pending"], r.Counts["claimed"], r.Counts["completed"], r.Counts["failed"])
	if r.OldestPendingAge != "" {
		fmt.Fprintf(w, "oldest pending: %s\n", r.OldestPendingAge)
	}
	if len(r.InFlight) == 0 {
		fmt.Fprintln(w, "in flight: none")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IN FLIGHT\tNODE\tATTEMPT\tSTATE\tLEASE AGE")
	for _, f := range r.InFlight {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", f.ID, f.Node, f.Attempts, f.State, f.LeaseAge)
	}
	tw.Flush()
}

// --- requeue ---

func requeueFlags(fs *flag.FlagSet, tf *toolFlags) {
	fs.BoolVar(&tf.failed, "failed", false, "requeue every failed spec")
	fs.DurationVar(&tf.olderThan, "older-than", 0, "with --failed: only specs failed longer ago than this (e.g. 1h)")
}

type requeued struct {
	IDs []string `json:"requeued"`
}

func requeue(ctx context.Context, t *toolEnv, ids []string) (any, error) {
	switch {
	case t.flags.failed && len(ids) > 0:
		return nil, usagef("requeue: give IDs or --failed, not both")
	case !t.flags.failed && len(ids) == 0:
		return nil, usagef("requeue: give IDs or --failed")
	case t.flags.olderThan != 0 && !t.flags.failed:
		return nil, usagef("requeue: --older-than goes with --failed")
	}
	if t.flags.failed {
		err := t.store.List(ctx, t.layout.Dir(queue.Failed), func(p queue.Page) error {
			for _, o := range p.Objects {
				if id, ok := t.layout.ID(queue.Failed, o.Key); ok && p.ServerTime.Sub(o.LastModified) >= t.flags.olderThan {
					ids = append(ids, id)
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("requeue: %w", err)
		}
	}
	res := requeued{IDs: []string{}}
	for _, id := range ids {
		err := t.proto.Requeue(ctx, id)
		switch {
		case errors.Is(err, queue.ErrNotFound):
			return res, fmt.Errorf("requeue: spec %s is not in failed/", id)
		case errors.Is(err, protocol.ErrHeld):
			return res, fmt.Errorf("requeue: spec %s is in flight; try again when it has finished", id)
		case err != nil:
			return res, fmt.Errorf("requeue: %w", err)
		}
		res.IDs = append(res.IDs, id)
	}
	return res, nil
}

func requeueText(w io.Writer, result any) {
	r := result.(requeued)
	for _, id := range r.IDs {
		fmt.Fprintf(w, "requeued %s\n", id)
	}
	if len(r.IDs) == 0 {
		fmt.Fprintln(w, "nothing to requeue")
	}
}

// --- inspect ---

type inspection struct {
	ID     string            `json:"id"`
	States []string          `json:"states"`
	Record map[string]string `json:"record,omitempty"`
	Lease  json.RawMessage   `json:"lease,omitempty"`
}

func inspect(ctx context.Context, t *toolEnv, args []string) (any, error) {
	if len(args) != 1 {
		return nil, usagef("inspect: give exactly one ID")
	}
	id := args[0]
	res := inspection{ID: id, States: []string{}}
	for _, st := range []queue.State{queue.Pending, queue.Claimed, queue.Completed, queue.Failed} {
		o, err := t.store.Head(ctx, t.layout.Key(st, id))
		if errors.Is(err, queue.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("inspect: %w", t.cause(err))
		}
		res.States = append(res.States, string(st))
		if len(o.Metadata) > 0 && (res.Record == nil || st == queue.Completed || st == queue.Failed) {
			res.Record = o.Metadata
		}
	}
	l, err := t.store.Get(ctx, t.layout.Key(queue.Leases, id), maxLeaseBytes)
	switch {
	case err == nil:
		res.Lease = l.Body
	case !errors.Is(err, queue.ErrNotFound):
		return nil, fmt.Errorf("inspect: %w", t.cause(err))
	}
	if len(res.States) == 0 && res.Lease == nil {
		// A HEAD answers a bare 404 for a missing bucket too; a listing says which.
		err := t.store.List(ctx, t.layout.Dir(queue.Pending), func(queue.Page) error { return errFirstPage })
		if err != nil && !errors.Is(err, errFirstPage) {
			return nil, fmt.Errorf("inspect: %w", t.cause(err))
		}
		return nil, fmt.Errorf("inspect: spec %s not found under %s", id, strings.TrimSuffix(t.layout.Dir(queue.Pending), "pending/"))
	}
	return res, nil
}

// errFirstPage stops a listing after its first page.
var errFirstPage = errors.New("first page")

// cause puts the reason an S3 call failed at the front of its error, naming
// the setting to check.
func (t *toolEnv) cause(err error) error {
	var netErr *net.OpError
	switch {
	case errors.Is(err, queue.ErrNoSuchBucket):
		return fmt.Errorf("bucket %q does not exist (CELLOS_FLEET_BUCKET): %w", t.cfg.Bucket, err)
	case errors.Is(err, queue.ErrAccessDenied):
		return fmt.Errorf("access denied to bucket %q (check the AWS credentials): %w", t.cfg.Bucket, err)
	case errors.As(err, &netErr):
		return fmt.Errorf("cannot reach the S3 endpoint (%s): %w", cmp.Or(redactURL(t.cfg.Endpoint), "AWS"), err)
	}
	return err
}

func inspectText(w io.Writer, result any) {
	r := result.(inspection)
	fmt.Fprintf(w, "spec %s: %s\n", r.ID, strings.Join(r.States, ", "))
	keys := make([]string, 0, len(r.Record))
	for k := range r.Record {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %s: %s\n", k, r.Record[k])
	}
	if r.Lease != nil {
		fmt.Fprintf(w, "  lease: %s\n", r.Lease)
	}
}

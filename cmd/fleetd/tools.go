package main

// The queue tools share one way to run: the daemon's settings (bucket,
// prefix, queue, endpoint), their own flags, text or --json output, and exit
// codes 0 ok, 1 error, 2 usage. The queue rules live in internal/admin; each
// tool's file here only parses and prints.

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
	"strconv"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/config"
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// tool is one subcommand, whatever its flags.
type tool interface {
	// synopsis is the usage line and what the tool does.
	synopsis() string
	// readOnly: the tool deletes nothing, so it needs no store self-test to
	// learn how deletes work on the store (see Protocol.SelfTest).
	readOnly() bool
	// bind declares the tool's own flags on fs and returns the command that
	// reads them.
	bind(fs *flag.FlagSet) command
}

// command is a tool bound to its flags' values.
type command struct {
	// args checks the positional arguments before any setting is read, so a
	// call that is wrong says so first.
	args func(args []string) error
	run  func(ctx context.Context, t *toolEnv, args []string) (result any, err error)
	text func(w io.Writer, result any)
	// lane is the queue lane the tool acts on, when a flag names one ("":
	// CELLOS_FLEET_QUEUE_NAME).
	lane func() string
}

// toolOf is a tool whose own flags are the fields of F: each tool declares
// its flags and nothing else's.
type toolOf[F any] struct {
	usage string
	flags func(fs *flag.FlagSet, f *F)
	args  func(f *F, args []string) error
	run   func(ctx context.Context, t *toolEnv, f *F, args []string) (result any, err error)
	text  func(w io.Writer, result any)
	lane  func(f *F) string
	// noDeletes: see tool.readOnly.
	noDeletes bool
}

func (t toolOf[F]) synopsis() string { return t.usage }
func (t toolOf[F]) readOnly() bool   { return t.noDeletes }

func (t toolOf[F]) bind(fs *flag.FlagSet) command {
	f := new(F)
	if t.flags != nil {
		t.flags(fs, f)
	}
	c := command{
		args: func(args []string) error { return t.args(f, args) },
		run: func(ctx context.Context, env *toolEnv, args []string) (any, error) {
			return t.run(ctx, env, f, args)
		},
		text: t.text,
		lane: func() string { return "" },
	}
	if t.lane != nil {
		c.lane = func() string { return t.lane(f) }
	}
	return c
}

// noFlags is the flags of a tool that has none of its own.
type noFlags struct{}

type toolEnv struct {
	cfg   config.Config
	admin *admin.Admin
	stdin io.Reader
	user  string // who runs the tool, for records of what it did
	// For a tool that serves (ui): the store it reads, the environment
	// (secrets are not flags) and where it logs.
	store  *store.Store
	getenv func(string) string
	stderr io.Writer
}

var tools = map[string]tool{
	"submit":   submitTool,
	"status":   statusTool,
	"requeue":  requeueTool,
	"inspect":  inspectTool,
	"prune":    pruneTool,
	"cancel":   cancelTool,
	"pause":    pauseTool,
	"resume":   resumeTool,
	"ui":       uiTool,
	"schedule": scheduleTool,
	"logs":     logsTool,
}

// runTool runs a subcommand and returns the exit code.
func runTool(name string, t tool, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	var asJSON bool
	var cmd command
	cl, err := parseCommandLine(args, getenv, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
		cmd = t.bind(fs)
	})
	switch {
	case cl.help:
		printToolUsage(stdout, name, t)
		return 0
	case cl.version:
		fmt.Fprintln(stdout, versionString())
		return 0
	}
	if err == nil || errors.Is(err, config.ErrNoBucket) {
		if aerr := cmd.args(cl.args); aerr != nil {
			err = usagef("%s: %v (see fleetd %s --help)", name, aerr, name)
		}
	}
	if err != nil {
		return fail(stderr, err)
	}
	cfg := cl.cfg
	if lane := cmd.lane(); lane != "" {
		cfg.QueueName = lane
	}
	m := metrics.New(1, version, shortRevision())
	client, err := newS3Client(cfg, getenv, m)
	if err != nil {
		return fail(stderr, err)
	}
	storage := store.New(client, cfg.Bucket, s3Policy(cfg, m))
	layout := store.NewLayout(cfg.Prefix, cfg.QueueName)
	proto := protocol.New(protocol.Config{Layout: layout, Node: cfg.NodeID, TTL: cfg.LeaseTTL, MaxAttempts: cfg.MaxAttempts,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}, storage)
	env := &toolEnv{cfg: cfg, admin: admin.New(storage, proto, layout, cfg.MaxSpecBytes), stdin: stdin, user: getenv("USER"),
		store: storage, getenv: getenv, stderr: stderr}
	if !t.readOnly() {
		mode, err := proto.SelfTest(context.Background())
		if err != nil {
			return fail(stderr, env.cause(fmt.Errorf("store self-test: %w", err)))
		}
		storage.SetDeleteMode(mode)
	}
	result, err := cmd.run(context.Background(), env, cl.args)
	if result != nil {
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(result)
		} else {
			cmd.text(stdout, result)
		}
	}
	if err != nil {
		if errors.Is(err, admin.ErrUsage) {
			err = usageError{Msg: err.Error()}
		}
		return fail(stderr, env.cause(err))
	}
	return 0
}

// fail prints err and returns its exit code: 2 for usage, else 1.
func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "fleetd: %v\n", err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

func printToolUsage(w io.Writer, name string, t tool) {
	fmt.Fprintf(w, "Usage: %s\n\n", t.synopsis())
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Bool("json", false, "print JSON")
	t.bind(fs)
	fmt.Fprintln(w, "Flags:")
	fs.VisitAll(func(f *flag.Flag) { fmt.Fprintf(w, "  --%s\t%s\n", f.Name, f.Usage) })
	fmt.Fprintf(w, "\nThe queue is chosen by the daemon's settings (%s, %s,\n%s, the endpoint): see fleetd --help.\n", config.Bucket, config.Prefix, config.QueueName)
}

// cause puts the reason an S3 call failed at the front of its error, naming
// the setting to check.
func (t *toolEnv) cause(err error) error {
	var netErr *net.OpError
	switch {
	case errors.Is(err, store.ErrNoSuchBucket):
		return fmt.Errorf("bucket %q does not exist (%s): %w", t.cfg.Bucket, config.Bucket, err)
	case errors.Is(err, store.ErrAccessDenied):
		return fmt.Errorf("access denied to bucket %q (check the AWS credentials): %w", t.cfg.Bucket, err)
	case errors.As(err, &netErr):
		return fmt.Errorf("cannot reach the S3 endpoint (%s): %w", cmp.Or(redactURL(t.cfg.Endpoint), "AWS"), err)
	}
	return err
}

// duration is a flag of one clear form: a Go duration (90s, 15m, 2h) or a
// number of days (7d).
type duration time.Duration

func (d *duration) String() string { return time.Duration(*d).String() }

func (d *duration) Set(s string) error {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseFloat(n, 64)
		if err == nil && days >= 0 {
			*d = duration(time.Duration(days * float64(24*time.Hour)))
			return nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return errors.New("want a duration such as 90s, 15m, 2h or 7d")
	}
	*d = duration(v)
	return nil
}

// oneID is the args check of a tool that takes exactly one spec id.
func oneID[F any](_ *F, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("give exactly one ID")
	}
	return nil
}

func noArgs[F any](_ *F, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	return nil
}

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
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/queue"
)

// tool is one subcommand.
type tool struct {
	usage string // the synopsis and what it does
	flags func(*flag.FlagSet, *toolFlags)
	// args checks the positional arguments before any setting is read, so a
	// call that is wrong says so first.
	args func(tf toolFlags, args []string) error
	run  func(ctx context.Context, t *toolEnv, args []string) (result any, err error)
	text func(w io.Writer, result any)
	// noDeletes: the tool deletes nothing, so it needs no store self-test to
	// learn how deletes work on the store (see Protocol.SelfTest).
	noDeletes bool
}

type toolFlags struct {
	json      bool
	id        string
	replace   bool
	in        duration
	at        string
	cron      string
	failed    bool
	olderThan duration
	state     string
	dryRun    bool
	all       bool
	lane      string
	ui        uiFlags
}

type toolEnv struct {
	cfg   Config
	admin *admin.Admin
	flags toolFlags
	stdin io.Reader
	user  string // who runs the tool, for records of what it did
	// For a tool that serves (ui): the store it reads, the environment
	// (secrets are not flags) and where it logs.
	store  *queue.Store
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
	var tf toolFlags
	cfg, positional, err := parseConfig(args, getenv, nil, func(fs *flag.FlagSet) {
		fs.BoolVar(&tf.json, "json", false, "print JSON")
		if t.flags != nil {
			t.flags(fs, &tf)
		}
	})
	switch {
	case cfg.help:
		printToolUsage(stdout, name, t)
		return 0
	case cfg.ShowVersion:
		fmt.Fprintln(stdout, versionString())
		return 0
	}
	if err == nil || errors.Is(err, errNoBucket) {
		if aerr := t.args(tf, positional); aerr != nil {
			err = usagef("%s: %v (see fleetd %s --help)", name, aerr, name)
		}
	}
	if err != nil {
		return fail(stderr, err)
	}
	if tf.lane != "" {
		cfg.QueueName = tf.lane
	}
	m := metrics.New(1, version, shortRevision())
	client, err := newS3Client(cfg, getenv, m)
	if err != nil {
		return fail(stderr, err)
	}
	store := queue.New(client, cfg.Bucket, s3Policy(cfg, m))
	layout := queue.NewLayout(cfg.Prefix, cfg.QueueName)
	proto := protocol.New(protocol.Config{Layout: layout, Node: cfg.NodeID, TTL: cfg.LeaseTTL, MaxAttempts: cfg.MaxAttempts,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}, store)
	env := &toolEnv{cfg: cfg, admin: admin.New(store, proto, layout, cfg.MaxSpecBytes), flags: tf, stdin: stdin, user: getenv("USER"),
		store: store, getenv: getenv, stderr: stderr}
	if !t.noDeletes {
		mode, err := proto.SelfTest(context.Background())
		if err != nil {
			return fail(stderr, env.cause(fmt.Errorf("store self-test: %w", err)))
		}
		store.SetDeleteMode(mode)
	}
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
		if errors.Is(err, admin.ErrUsage) {
			err = usageError{err.Error()}
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
	fmt.Fprintf(w, "Usage: %s\n\n", t.usage)
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Bool("json", false, "print JSON")
	var tf toolFlags
	if t.flags != nil {
		t.flags(fs, &tf)
	}
	fmt.Fprintln(w, "Flags:")
	fs.VisitAll(func(f *flag.Flag) { fmt.Fprintf(w, "  --%s\t%s\n", f.Name, f.Usage) })
	fmt.Fprintln(w, "\nThe queue is chosen by the daemon's settings (CELLOS_FLEET_BUCKET, _PREFIX,\n_QUEUE_NAME, the endpoint): see fleetd --help.")
}

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

func noArgs(_ toolFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	return nil
}

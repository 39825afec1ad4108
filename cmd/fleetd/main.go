// Command fleetd runs execution-cell specs from an S3 prefix used as a work
// queue, N at a time, handing each to a local cellos-supervisor.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/time/rate"

	"github.com/cellos/fleetd/internal/drain"
	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/ops"
	"github.com/cellos/fleetd/internal/pipeline"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/queue"
	"github.com/cellos/fleetd/internal/recovery"
)

// version is fleetd's semantic version; revision may be set with
// -ldflags "-X main.revision=abc1234", else it comes from the build info.
var (
	version  = "0.6.0"
	revision = ""
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Environ(), os.Stdin, os.Stdout, os.Stderr))
}

// run is fleetd's whole life: configure, work until signalled, drain. It
// returns the exit code: 0 after a drain, 1 on a runtime failure, 2 on bad
// usage or configuration. environ is only searched for misspelt settings.
func run(args []string, getenv func(string) string, environ []string, stdin io.Reader, stdout, stderr io.Writer) int {
	unknown := unknownVariables(environ)
	if len(args) > 0 {
		switch name := args[0]; name {
		case "help":
			if t, ok := tools[cmpOr(args[1:])]; ok {
				printToolUsage(stdout, args[1], t)
			} else {
				printUsage(stdout)
			}
			return 0
		case "version":
			fmt.Fprintln(stdout, versionString())
			return 0
		default:
			if t, ok := tools[name]; ok {
				if len(unknown) > 0 {
					fmt.Fprintf(stderr, "fleetd: warning: unknown variables ignored: %s\n", describeUnknown(unknown))
				}
				return runTool(name, t, args[1:], getenv, stdin, stdout, stderr)
			}
		}
	}
	cfg, positional, err := parseConfig(args, getenv, stdout, nil)
	if err == nil && len(positional) > 0 {
		err = usagef("unexpected argument %q (see fleetd --help)", positional[0])
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "fleetd: %v\n", err)
		if len(unknown) > 0 {
			fmt.Fprintf(stderr, "fleetd: warning: unknown variables ignored: %s\n", describeUnknown(unknown))
		}
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	case cfg.ShowVersion:
		fmt.Fprintln(stdout, versionString())
		return 0
	case cfg.help:
		return 0
	}
	supervisor, err := exec.Check(cfg.Supervisor)
	if err != nil {
		fmt.Fprintf(stderr, "fleetd: CELLOS_FLEET_SUPERVISOR: %v\n", err)
		return 2
	}
	log := newLogger(cfg, stderr).With("node", cfg.NodeID)
	if len(unknown) > 0 {
		// Keyed by the unknown variable, valued by the closest known one.
		log.Warn("unknown variables ignored", "did_you_mean", unknown)
	}
	m := metrics.New(cfg.Concurrency, version, shortRevision(), protocol.OutcomeLabels()...)
	prog := ops.NewProgress(time.Now())

	client, err := newS3Client(cfg, getenv, m, prog.S3Attempt)
	if err != nil {
		log.Error("S3 client", "err", err)
		return 1
	}
	layout := queue.NewLayout(cfg.Prefix, cfg.QueueName)
	store := queue.New(client, cfg.Bucket, s3Policy(cfg, m))
	proto := protocol.New(protocol.Config{
		Layout:      layout,
		Node:        cfg.NodeID,
		TTL:         cfg.LeaseTTL,
		MaxAttempts: cfg.MaxAttempts,
		Logger:      log,
		Metrics:     m,
	}, store)

	// Signals are counted rather than handled with NotifyContext: the first
	// starts the drain, a second may cut it short.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	// Past the drain deadline, cells get the stop grace to exit and their
	// release two S3 request timeouts; then fleetd exits and leaves the rest
	// to recovery. See the README's stop-timeout formula.
	d := drain.New(context.Background(), cfg.StopGrace+2*cfg.S3Timeout)
	p := pipeline.New(pipeline.Config{
		Node:         cfg.NodeID,
		Pool:         cfg.PoolID,
		Layout:       layout,
		Concurrency:  cfg.Concurrency,
		PollInterval: cfg.PollInterval,
		MaxSpecBytes: cfg.MaxSpecBytes,
		MaxAttempts:  cfg.MaxAttempts,
		CellTimeout:  cfg.CellTimeout,
		Logger:       log,
		Metrics:      m,
	}, store, proto, prog.Runner(newRunner(cfg, supervisor, getenv, stdout, stderr)), d)
	rescuer := recovery.New(proto, d, cfg.LeaseTTL, log)
	beat := ops.HeartbeatConfig{Interval: cfg.Heartbeat, Bucket: cfg.Bucket, Prefix: cfg.Prefix, QueueName: cfg.QueueName,
		Pool: cfg.PoolID, Concurrency: cfg.Concurrency, InFlight: p.Cells, Logger: log}

	log.Info("fleetd starting", "version", versionString(), "bucket", cfg.Bucket, "prefix", cfg.Prefix,
		"queue_name", cfg.QueueName, "pool_id", cfg.PoolID, "concurrency", cfg.Concurrency,
		"supervisor", supervisor, "endpoint", redactURL(cfg.Endpoint), "s3_rps", cfg.S3RPS)
	if cfg.MetricsAddr != "" {
		stop, err := ops.Serve(ops.Config{Addr: cfg.MetricsAddr, Metrics: m.Handler(), Agent: p, Progress: prog,
			Draining: func() bool { return d.Intake().Err() != nil }, Logger: log,
			Concurrency: cfg.Concurrency, PollInterval: cfg.PollInterval, LeaseTTL: cfg.LeaseTTL, S3Timeout: cfg.S3Timeout})
		if err != nil {
			log.Error("metrics server", "addr", cfg.MetricsAddr, "err", err)
			return 1
		}
		defer stop()
	}
	if code, ok := selfTest(proto, log, sigs); !ok {
		return code
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The heartbeat lasts until the last cell is finished; recovery
		// stops with intake.
		beating, stopBeat := context.WithCancel(context.Background())
		var background sync.WaitGroup
		background.Go(func() { ops.Heartbeat(beating, beat) })
		background.Go(func() { rescuer.Run(d.Intake()) })
		p.Run()
		stopBeat()
		background.Wait()
	}()

	sig := <-sigs
	d.CloseIntake() // before the log line, so whoever reads it sees the node not ready
	log.Info("drain started: no new claims; waiting for cells in flight",
		"signal", sig.String(), "in_flight", p.Cells(), "drain_timeout_ms", cfg.DrainTimeout.Milliseconds())
	deadline, cut := context.WithCancel(context.Background())
	defer cut()
	if cfg.DrainTimeout > 0 {
		deadline, cut = context.WithTimeout(deadline, cfg.DrainTimeout)
		defer cut()
	}
	go func() {
		for s := range sigs {
			if cfg.DrainTimeout > 0 {
				log.Warn("second signal: stopping cells now and requeueing their specs", "signal", s.String())
				cut()
				return
			}
			log.Warn("second signal ignored: cells keep running until they end (set CELLOS_FLEET_DRAIN_TIMEOUT_MS to bound the drain)",
				"signal", s.String(), "in_flight", p.Cells())
		}
	}()
	stopped := d.Drain(deadline)
	<-done
	log.Info("drain complete", "cells_stopped", stopped)
	return 0
}

// selfTest runs the store self-test until it passes. A definite failure
// stops fleetd with exit 2; no answer is retried with backoff (the store or
// the network may still be coming up), and a signal meanwhile exits 0.
func selfTest(proto *protocol.Protocol, log *slog.Logger, sigs <-chan os.Signal) (code int, ok bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		err := proto.SelfTest(ctx)
		switch {
		case err == nil:
			log.Info("store self-test passed")
			return 0, true
		case errors.Is(err, protocol.ErrUnfit):
			log.Error("store self-test failed: fleetd cannot run on this bucket", "err", err)
			return 2, false
		case ctx.Err() != nil:
			log.Info("signalled during the store self-test; exiting")
			return 0, false
		}
		log.Warn("store self-test got no answer; retrying", "err", err, "retry_in_ms", wait.Milliseconds())
		select {
		case <-ctx.Done():
			log.Info("signalled during the store self-test; exiting")
			return 0, false
		case <-time.After(wait):
		}
	}
}

// s3Policy is the store's retry policy from the settings.
func s3Policy(cfg Config, m *metrics.Metrics) queue.Policy {
	return queue.Policy{Attempts: cfg.S3Attempts, Timeout: cfg.S3Timeout, SlowDown: m.SlowDown}
}

// cmpOr returns the first argument, or "" when there is none.
func cmpOr(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by parseConfig
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// newRunner builds the supervisor runner. In JSON log mode each relayed line
// is a JSON record on the stream it came from, so the log stays parseable
// whatever a supervisor prints; in text mode lines pass through prefixed with
// the spec id. The supervisor inherits fleetd's environment, secrets included,
// so their values are redacted from what it prints.
func newRunner(cfg Config, supervisor string, getenv func(string) string, stdout, stderr io.Writer) *exec.Runner {
	r := &exec.Runner{Path: supervisor, Grace: cfg.StopGrace, Stdout: stdout, Stderr: stderr}
	for _, name := range []string{"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"} {
		if v := getenv(name); v != "" {
			r.Redact = append(r.Redact, v)
		}
	}
	if cfg.LogFormat == "json" {
		// Their own handlers: supervisor output is relayed at every log level.
		out := slog.New(slog.NewJSONHandler(stdout, nil)).With("node", cfg.NodeID)
		errOut := slog.New(slog.NewJSONHandler(stderr, nil)).With("node", cfg.NodeID)
		r.Lines = func(specID, stream, line string) {
			log := out
			if stream == "stderr" {
				log = errOut
			}
			log.Info("supervisor output", "spec_id", specID, "stream", stream, "line", line)
		}
	}
	return r
}

// newS3Client builds the S3 client; each request attempt's status (0: no
// answer) is also told to every function in attempts.
func newS3Client(cfg Config, getenv func(string) string, m *metrics.Metrics, attempts ...func(status int)) (*s3.Client, error) {
	ctx := context.Background()
	opts := []func(*config.LoadOptions) error{
		// The store bounds and retries every request itself, so that it knows
		// when a write's outcome is unknown; the SDK must not retry.
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(cfg.S3Timeout + time.Second)),
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if getenv("AWS_REGION") == "" && getenv("AWS_DEFAULT_REGION") == "" {
		opts = append(opts, config.WithRegion("us-east-1"))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS config: %w", err)
	}
	var limiter *rate.Limiter
	if cfg.S3RPS > 0 {
		limiter = rate.NewLimiter(rate.Limit(cfg.S3RPS), cfg.S3Burst)
	}
	return s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = cfg.PathStyle
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		// Checksums only where S3 requires them: S3-compatible stores differ.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		o.DisableLogOutputChecksumValidationSkipped = true
		if limiter != nil {
			o.APIOptions = append(o.APIOptions, queue.RateLimit(limiter, m.RateLimitWaited))
		}
		o.APIOptions = append(o.APIOptions, queue.Observe(func(operation string, status int, d time.Duration) {
			m.S3Request(operation, status, d)
			for _, f := range attempts {
				f(status)
			}
		}))
	}), nil
}

// redactURL drops any user:password from an endpoint URL before it is logged.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	u.User = nil
	return u.String()
}

func versionString() string {
	return fmt.Sprintf("fleetd %s (%s)", version, shortRevision())
}

// shortRevision is the 7-character VCS revision fleetd was built from.
func shortRevision() string {
	rev := revision
	if rev == "" {
		rev = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					rev = s.Value
				}
			}
		}
	}
	if len(rev) > 7 {
		rev = rev[:7]
	}
	return rev
}

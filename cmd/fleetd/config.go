package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
)

// setting is one configuration value: a flag, the environment variable that
// sets it when the flag is absent, and the default when neither is given.
type setting struct {
	flag, env, def, usage string
}

// settings lists every configuration value, in --help order. The first eight
// are cellos-fleet 0.5.1's; their names and defaults must not change.
var settings = []setting{
	{"bucket", "CELLOS_FLEET_BUCKET", "", "S3 bucket holding the queue (required)"},
	{"prefix", "CELLOS_FLEET_PREFIX", "fleet", "key prefix of the queue; a trailing / is trimmed"},
	{"queue-name", "CELLOS_FLEET_QUEUE_NAME", "", "queue lane below the prefix (empty: flat layout)"},
	{"pool-id", "CELLOS_FLEET_POOL_ID", "", "placement pool of this runner (empty: take every spec)"},
	{"lanes", "CELLOS_FLEET_LANES", "", "serve several lanes with weights, e.g. critical=6,default=3,low=1 (_ is the prefix's own lane); instead of CELLOS_FLEET_QUEUE_NAME"},
	{"lane-order", "CELLOS_FLEET_LANE_ORDER", "weighted", "weighted (free slots shared by weight, smooth round-robin) or strict (a lane only while every heavier one is empty)"},
	{"supervisor", "CELLOS_FLEET_SUPERVISOR", "cellos-supervisor", "binary run as <supervisor> <spec-path>"},
	{"poll-interval-ms", "CELLOS_FLEET_POLL_INTERVAL_MS", "5000", "time between listings of an idle queue"},
	{"heartbeat-interval-ms", "CELLOS_FLEET_HEARTBEAT_INTERVAL_MS", "30000", "time between heartbeat log events"},
	{"node-id", "CELLOS_FLEET_NODE_ID", "", "node identity in logs and claims (default: hostname)"},
	{"concurrency", "CELLOS_FLEET_CONCURRENCY", "1", "cells run at once on this host (1-4096)"},
	{"s3-rps", "CELLOS_FLEET_S3_RPS", "0", "limit on S3 requests per second, retries included (0: off)"},
	{"s3-burst", "CELLOS_FLEET_S3_BURST", "0", "burst of the S3 request limit (0: the rate, at least 1)"},
	{"s3-timeout-ms", "CELLOS_FLEET_S3_TIMEOUT_MS", "10000", "time limit of one S3 request attempt"},
	{"s3-max-attempts", "CELLOS_FLEET_S3_MAX_ATTEMPTS", "5", "attempts of one S3 request before it is reported failed (backoff with jitter between)"},
	{"endpoint-url", "AWS_ENDPOINT_URL_S3", "", "S3 endpoint URL (also read from AWS_ENDPOINT_URL)"},
	{"s3-path-style", "CELLOS_FLEET_S3_PATH_STYLE", "", "path-style S3 addressing (default: true when an endpoint is set)"},
	{"max-spec-bytes", "CELLOS_FLEET_MAX_SPEC_BYTES", "1048576", "largest spec accepted; larger ones go to failed/"},
	{"output-bytes", "CELLOS_FLEET_OUTPUT_BYTES", "1048576", "keep the last this many bytes of each cell's output (redacted) in output/<id>.txt beside its result (0: off; at most 64 MiB, held in memory per running cell)"},
	{"lease-ttl-ms", "CELLOS_FLEET_LEASE_TTL_MS", "60000", "session time-to-live (min 3000): the agent's one heartbeat is renewed every ttl/3; a dead agent's specs come back about 2 ttl after it died"},
	{"on-lapse", "CELLOS_FLEET_ON_LAPSE", "freeze", "what a cell does while the store cannot be reached in time: freeze (SIGSTOP its process group; thawed when the store answers, killed if its spec was taken over) or stop (SIGTERM; the spec returns to pending/)"},
	{"max-attempts", "CELLOS_FLEET_MAX_ATTEMPTS", "3", "runs of a spec before a recovered one goes to failed/"},
	{"retries", "CELLOS_FLEET_RETRIES", "0", "times a failed cell (non-zero exit, signal, timeout) runs again, after a backoff, before its spec goes to failed/ (0-1000; fleetd submit --retries sets it per spec)"},
	{"retry-backoff-ms", "CELLOS_FLEET_RETRY_BACKOFF_MS", "10000", "backoff before a failed cell's first retry; doubles each retry, full jitter, at most 1 h"},
	{"drain-timeout-ms", "CELLOS_FLEET_DRAIN_TIMEOUT_MS", "0", "after SIGTERM, stop cells and requeue their specs after this long (0: wait for every cell)"},
	{"cell-timeout-ms", "CELLOS_FLEET_CELL_TIMEOUT_MS", "0", "stop a cell running longer than this; its spec fails with reason timeout (0: none)"},
	{"stop-grace-ms", "CELLOS_FLEET_STOP_GRACE_MS", "10000", "time a stopped cell gets between SIGTERM and SIGKILL"},
	{"metrics-addr", "CELLOS_FLEET_METRICS_ADDR", "", "serve /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9464 (empty: off)"},
	{"notify-url", "CELLOS_FLEET_NOTIFY_URL", "", "NATS server the store publishes bucket events to, e.g. nats://127.0.0.1:4222; comma-separated for a cluster; user:password@ or token@ allowed, never logged (empty: off, poll only)"},
	{"notify-subject", "CELLOS_FLEET_NOTIFY_SUBJECT", "", "subject the store publishes this bucket's events to (required with --notify-url)"},
	{"notify-poll-interval-ms", "CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS", "60000", "time between listings of pending/ while notifications flow: the safety net for lost events"},
	{"notify-keys", "CELLOS_FLEET_NOTIFY_KEYS", "raw", "how events spell keys: raw (versitygw) or url (URL-encoded: AWS, MinIO)"},
	{"notify-creds", "CELLOS_FLEET_NOTIFY_CREDS", "", "NATS credentials file (user JWT and nkey seed)"},
	{"notify-tls-ca", "CELLOS_FLEET_NOTIFY_TLS_CA", "", "CA certificates (PEM) that sign the NATS server's"},
	{"notify-tls-cert", "CELLOS_FLEET_NOTIFY_TLS_CERT", "", "client certificate (PEM) for NATS; with --notify-tls-key"},
	{"notify-tls-key", "CELLOS_FLEET_NOTIFY_TLS_KEY", "", "client certificate's key (PEM) for NATS"},
	{"log-level", "CELLOS_FLEET_LOG_LEVEL", "info", "debug, info, warn or error"},
	{"log-format", "CELLOS_FLEET_LOG_FORMAT", "json", "json or text"},
}

// maxOutputBytes bounds CELLOS_FLEET_OUTPUT_BYTES: each running cell holds
// that much in memory, and its output is one PUT.
const maxOutputBytes = 64 << 20

// Config is fleetd's validated configuration.
type Config struct {
	Bucket    string
	Prefix    string
	QueueName string
	// Lanes, when set, are the lanes this agent serves and their weights
	// (CELLOS_FLEET_LANES); LaneStrict: CELLOS_FLEET_LANE_ORDER=strict.
	Lanes        []Lane
	LaneStrict   bool
	PoolID       string
	Supervisor   string
	PollInterval time.Duration
	Heartbeat    time.Duration
	NodeID       string
	Concurrency  int
	S3RPS        float64
	S3Burst      int
	S3Timeout    time.Duration
	S3Attempts   int
	Endpoint     string
	PathStyle    bool
	MaxSpecBytes int64
	OutputBytes  int
	LeaseTTL     time.Duration
	MaxAttempts  int
	Retries      int
	RetryBackoff time.Duration
	// SpecRetries is --retries when given on the command line (a tool's
	// per-spec limit), else -1.
	SpecRetries  int
	DrainTimeout time.Duration
	CellTimeout  time.Duration
	// Freeze: cells freeze while the session lapses (CELLOS_FLEET_ON_LAPSE).
	Freeze      bool
	StopGrace   time.Duration
	MetricsAddr string
	Notify      NotifyConfig
	LogLevel    string
	LogFormat   string
	ShowVersion bool
	help        bool
}

// NotifyConfig is where bucket notifications come from; URL empty: off.
type NotifyConfig struct {
	URL          string // may hold credentials: log notify.Redact(URL)
	Subject      string
	PollInterval time.Duration // the safety-net poll while events flow
	URLKeys      bool
	Creds        string
	TLSCA        string
	TLSCert      string
	TLSKey       string
}

// errNoBucket: the one setting with no default is missing.
var errNoBucket = usageError{"CELLOS_FLEET_BUCKET is required (or --bucket)"}

// usageError is a bad flag or setting: fleetd exits with status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// parseConfig reads flags, then the environment, then defaults, and validates
// the result. Errors name the flag or variable and the value. extra, if not
// nil, adds a subcommand's own flags; the positional arguments are returned.
func parseConfig(args []string, getenv func(string) string, usageOut io.Writer, extra func(*flag.FlagSet)) (Config, []string, error) {
	fs := flag.NewFlagSet("fleetd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	values := make(map[string]*string, len(settings))
	for _, s := range settings {
		values[s.flag] = fs.String(s.flag, "", s.usage)
	}
	var cfg Config
	fs.BoolVar(&cfg.ShowVersion, "version", false, "print the version and exit")
	fs.BoolVar(&cfg.ShowVersion, "V", false, "print the version and exit")
	if extra != nil {
		extra(fs)
	}
	positional, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			if usageOut != nil {
				printUsage(usageOut)
			}
			cfg.help = true
			return cfg, nil, nil
		}
		// The flag package names flags with one dash; the help uses two.
		msg := strings.NewReplacer("flag -", "flag --", "defined: -", "defined: --").Replace(err.Error())
		return cfg, nil, usagef("%s (see fleetd --help)", msg)
	}
	if cfg.ShowVersion {
		return cfg, positional, nil // --version reads no configuration
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	p := parser{}
	get := func(name string) value {
		for _, s := range settings {
			if s.flag != name {
				continue
			}
			if given[name] {
				return value{name: "--" + name, raw: *values[name], set: true}
			}
			if v := getenv(s.env); v != "" {
				return value{name: s.env, raw: v, set: true}
			}
			if name == "endpoint-url" {
				if v := getenv("AWS_ENDPOINT_URL"); v != "" {
					return value{name: "AWS_ENDPOINT_URL", raw: v, set: true}
				}
			}
			return value{name: s.env, raw: s.def}
		}
		panic("unknown setting " + name)
	}

	cfg.Bucket = strings.TrimSpace(get("bucket").raw)
	if cfg.Bucket == "" {
		return cfg, positional, errNoBucket
	}
	cfg.Prefix = get("prefix").raw
	cfg.QueueName = strings.TrimSpace(get("queue-name").raw)
	cfg.PoolID = strings.TrimSpace(get("pool-id").raw)
	if v := get("lanes"); strings.TrimSpace(v.raw) != "" {
		lanes, err := parseLanes(v.raw)
		switch {
		case err != nil:
			p.fail(v, "name=weight,... with distinct names (_ for the prefix's own lane) and weights from 1 to 1000: "+err.Error())
		case cfg.QueueName != "":
			p.fail(v, "lanes or CELLOS_FLEET_QUEUE_NAME, not both")
		}
		cfg.Lanes = lanes
	}
	cfg.LaneStrict = p.oneOf(get("lane-order"), "weighted", "strict") == "strict"
	cfg.Supervisor = get("supervisor").raw
	nodeID := get("node-id")
	cfg.NodeID = strings.TrimSpace(nodeID.raw)
	switch {
	case cfg.NodeID == "":
		h, err := os.Hostname()
		if err != nil {
			return cfg, nil, fmt.Errorf("node id: no CELLOS_FLEET_NODE_ID and no hostname: %w", err)
		}
		cfg.NodeID = sanitizeNodeID(h)
	case !validNodeID(cfg.NodeID):
		p.fail(nodeID, fmt.Sprintf("1 to %d printable ASCII characters, no spaces", maxNodeID))
	}
	cfg.PollInterval = p.millis(get("poll-interval-ms"), 1)
	cfg.Heartbeat = p.millis(get("heartbeat-interval-ms"), 1)
	cfg.Concurrency = p.integer(get("concurrency"), 1, 4096)
	cfg.S3RPS = p.float(get("s3-rps"))
	cfg.S3Burst = p.integer(get("s3-burst"), 0, math.MaxInt32)
	cfg.S3Timeout = p.millis(get("s3-timeout-ms"), 100)
	cfg.S3Attempts = p.integer(get("s3-max-attempts"), 1, 100)
	endpoint := get("endpoint-url")
	cfg.Endpoint = endpoint.raw
	if cfg.Endpoint != "" {
		if u, err := url.Parse(cfg.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.fail(endpoint, "an http:// or https:// URL")
		}
	}
	cfg.PathStyle = p.boolean(get("s3-path-style"), endpoint.set)
	cfg.MaxSpecBytes = int64(p.integer(get("max-spec-bytes"), 1, 5<<30))
	cfg.OutputBytes = p.integer(get("output-bytes"), 0, maxOutputBytes)
	cfg.LeaseTTL = p.millis(get("lease-ttl-ms"), int(protocol.MinTTL/time.Millisecond))
	cfg.MaxAttempts = p.integer(get("max-attempts"), 1, 1000)
	cfg.Retries = p.integer(get("retries"), 0, 1000)
	cfg.SpecRetries = -1
	if given["retries"] {
		cfg.SpecRetries = cfg.Retries
	}
	cfg.RetryBackoff = p.millis(get("retry-backoff-ms"), 0)
	cfg.DrainTimeout = p.millis(get("drain-timeout-ms"), 0)
	cfg.CellTimeout = p.millis(get("cell-timeout-ms"), 0)
	cfg.Freeze = p.oneOf(get("on-lapse"), "freeze", "stop") == "freeze"
	cfg.StopGrace = p.millis(get("stop-grace-ms"), 0)
	cfg.MetricsAddr = strings.TrimSpace(get("metrics-addr").raw)
	if cfg.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(cfg.MetricsAddr); err != nil {
			p.fail(get("metrics-addr"), "host:port")
		}
	}
	cfg.Notify = parseNotify(&p, get)
	if len(cfg.Lanes) > 0 && cfg.Notify.URL != "" {
		p.fail(get("lanes"), "one lane with CELLOS_FLEET_NOTIFY_URL (notifications serve one lane's agents)")
	}
	cfg.LogLevel = p.oneOf(get("log-level"), "debug", "info", "warn", "error")
	cfg.LogFormat = p.oneOf(get("log-format"), "json", "text")
	if p.err != nil {
		return cfg, nil, p.err
	}
	if cfg.S3RPS > 0 && cfg.S3Burst == 0 {
		cfg.S3Burst = max(1, int(math.Ceil(cfg.S3RPS)))
	}
	return cfg, positional, nil
}

// parseNotify reads the notification settings. A bad URL is named without its
// value, which may hold a password.
func parseNotify(p *parser, get func(string) value) NotifyConfig {
	n := NotifyConfig{
		URL:          strings.TrimSpace(get("notify-url").raw),
		Subject:      strings.TrimSpace(get("notify-subject").raw),
		PollInterval: p.millis(get("notify-poll-interval-ms"), 1),
		URLKeys:      p.oneOf(get("notify-keys"), "raw", "url") == "url",
		Creds:        get("notify-creds").raw,
		TLSCA:        get("notify-tls-ca").raw,
		TLSCert:      get("notify-tls-cert").raw,
		TLSKey:       get("notify-tls-key").raw,
	}
	if n.URL == "" {
		return n
	}
	for _, raw := range strings.Split(n.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
			if p.err == nil {
				p.err = usagef("invalid %s (value not shown: it may hold credentials): want nats://host:port or tls://host:port, comma-separated", get("notify-url").name)
			}
			return n
		}
	}
	if n.Subject == "" || strings.ContainsAny(n.Subject, " \t\r\n") {
		p.fail(get("notify-subject"), "the subject the store publishes to (required with CELLOS_FLEET_NOTIFY_URL; no spaces)")
	}
	if (n.TLSCert == "") != (n.TLSKey == "") {
		p.fail(get("notify-tls-key"), "both CELLOS_FLEET_NOTIFY_TLS_CERT and CELLOS_FLEET_NOTIFY_TLS_KEY, or neither")
	}
	return n
}

// maxNodeID bounds the node id, which every claim, lease and log line carries.
const maxNodeID = 128

// validNodeID reports whether s may be a node id: printable ASCII without
// spaces. It travels in x-amz-meta-* headers, where net/http refuses control
// characters (every claim would fail), and in every log line.
func validNodeID(s string) bool {
	if s == "" || len(s) > maxNodeID {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// sanitizeNodeID makes a valid node id of a hostname: each character a node id
// may not hold becomes '-', so a non-ASCII hostname still gives a default.
func sanitizeNodeID(host string) string {
	var b strings.Builder
	for _, r := range host {
		if r <= ' ' || r > '~' {
			r = '-'
		}
		b.WriteRune(r)
	}
	s := b.String()
	if len(s) > maxNodeID {
		s = s[:maxNodeID]
	}
	if s == "" {
		s = "-"
	}
	return s
}

// unknownVariables maps each CELLOS_FLEET_* variable in environ that fleetd
// does not read to the known one closest to it: a misspelt setting would
// otherwise be ignored without a word.
func unknownVariables(environ []string) map[string]string {
	const prefix = "CELLOS_FLEET_"
	known := []string{uiTokenVariable}
	for _, s := range settings {
		if strings.HasPrefix(s.env, prefix) {
			known = append(known, s.env)
		}
	}
	unknown := map[string]string{}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, prefix) || slices.Contains(known, name) {
			continue
		}
		best, bestDist := "", math.MaxInt
		for _, k := range known {
			if d := levenshtein(name, k); d < bestDist {
				best, bestDist = k, d
			}
		}
		unknown[name] = best
	}
	return unknown
}

// describeUnknown renders unknownVariables' result as one line, sorted.
func describeUnknown(unknown map[string]string) string {
	names := slices.Sorted(maps.Keys(unknown))
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s (did you mean %s?)", n, unknown[n])
	}
	return strings.Join(parts, ", ")
}

// levenshtein is the edit distance between a and b, in bytes.
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// parseInterleaved parses flags placed before, between or after positional
// arguments ("submit a.json --id x"); "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

type value struct {
	name string // the flag or variable the raw value came from
	raw  string
	set  bool // given by the user, not the default
}

// parser converts values and keeps the first error.
type parser struct{ err error }

func (p *parser) fail(v value, want string) {
	if p.err == nil {
		p.err = usagef("invalid %s=%q: want %s", v.name, v.raw, want)
	}
}

func (p *parser) integer(v value, lo, hi int) int {
	n, err := strconv.Atoi(strings.TrimSpace(v.raw))
	if err != nil || n < lo || n > hi {
		p.fail(v, fmt.Sprintf("an integer from %d to %d", lo, hi))
	}
	return n
}

func (p *parser) millis(v value, lo int) time.Duration {
	return time.Duration(p.integer(v, lo, math.MaxInt32)) * time.Millisecond
}

func (p *parser) float(v value) float64 {
	f, err := strconv.ParseFloat(strings.TrimSpace(v.raw), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		p.fail(v, "a number >= 0")
	}
	return f
}

func (p *parser) boolean(v value, def bool) bool {
	if v.raw == "" {
		return def
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v.raw))
	if err != nil {
		p.fail(v, "true or false")
	}
	return b
}

func (p *parser) oneOf(v value, allowed ...string) string {
	s := strings.ToLower(strings.TrimSpace(v.raw))
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	p.fail(v, "one of "+strings.Join(allowed, ", "))
	return ""
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: fleetd [flags]                 run the agent\n"+
		"       fleetd submit FILE... [--id ID] [--replace] [--retries N] [--in DURATION | --at RFC3339] [--json]\n"+
		"       fleetd status [--json]\n"+
		"       fleetd requeue ID... | --failed [--older-than DURATION] [--json]\n"+
		"       fleetd inspect ID [--json]\n"+
		"       fleetd logs ID [--lane NAME] [--json]\n"+
		"       fleetd cancel ID [--json]\n"+
		"       fleetd pause [--all] | fleetd resume [--all]\n"+
		"       fleetd prune --older-than DURATION [--state completed|failed] [--dry-run] [--json]\n"+
		"       fleetd ui [--listen 127.0.0.1:8080] [--allow-remote] [--allow-actions]\n"+
		"       fleetd schedule add NAME --cron EXPR SPEC-FILE | schedule ls | schedule rm NAME\n"+
		"       fleetd help [TOOL] | fleetd version\n\n"+
		"fleetd runs execution-cell specs from an S3 queue. Each setting is a flag or an\n"+
		"environment variable; a flag wins over its variable. AWS credentials and region\n"+
		"come from the AWS SDK's default chain.\n\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FLAG\tVARIABLE\tDEFAULT\tMEANING")
	for _, s := range settings {
		def := s.def
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "--%s\t%s\t%s\t%s\n", s.flag, s.env, def, s.usage)
	}
	fmt.Fprintf(tw, "--version, -V\t\t\tprint the version and exit\n")
	tw.Flush()
}

// Lane is one lane of CELLOS_FLEET_LANES: a queue name ("" for the prefix's
// own, written _) and its weight.
type Lane struct {
	Name   string
	Weight int
}

// parseLanes reads CELLOS_FLEET_LANES: name=weight, comma-separated.
func parseLanes(raw string) ([]Lane, error) {
	var lanes []Lane
	seen := map[string]bool{}
	for _, part := range strings.Split(raw, ",") {
		name, w, ok := strings.Cut(strings.TrimSpace(part), "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("%q is not name=weight", part)
		}
		if name == "_" {
			name = ""
		}
		if strings.ContainsAny(name, "/ \t") {
			return nil, fmt.Errorf("lane %q: no / or spaces", name)
		}
		if seen[name] {
			return nil, fmt.Errorf("lane %q given twice", cmp.Or(name, "_"))
		}
		seen[name] = true
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 1 || n > 1000 {
			return nil, fmt.Errorf("lane %q: weight %q", cmp.Or(name, "_"), w)
		}
		lanes = append(lanes, Lane{Name: name, Weight: n})
	}
	return lanes, nil
}

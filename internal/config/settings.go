package config

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
)

// Var is the environment variable of a setting. The settings' variables are
// the constants below: code names a setting by its constant, so a misspelt
// name does not compile.
type Var string

// The settings' variables, in --help order. The first eight are cellos-fleet
// 0.5.1's; their names and defaults must not change.
const (
	Bucket                Var = "CELLOS_FLEET_BUCKET"
	Prefix                Var = "CELLOS_FLEET_PREFIX"
	QueueName             Var = "CELLOS_FLEET_QUEUE_NAME"
	PoolID                Var = "CELLOS_FLEET_POOL_ID"
	Lanes                 Var = "CELLOS_FLEET_LANES"
	LaneOrder             Var = "CELLOS_FLEET_LANE_ORDER"
	Supervisor            Var = "CELLOS_FLEET_SUPERVISOR"
	PollInterval          Var = "CELLOS_FLEET_POLL_INTERVAL_MS"
	HeartbeatInterval     Var = "CELLOS_FLEET_HEARTBEAT_INTERVAL_MS"
	NodeID                Var = "CELLOS_FLEET_NODE_ID"
	Concurrency           Var = "CELLOS_FLEET_CONCURRENCY"
	S3RPS                 Var = "CELLOS_FLEET_S3_RPS"
	S3Burst               Var = "CELLOS_FLEET_S3_BURST"
	S3Timeout             Var = "CELLOS_FLEET_S3_TIMEOUT_MS"
	S3MaxAttempts         Var = "CELLOS_FLEET_S3_MAX_ATTEMPTS"
	EndpointURL           Var = "AWS_ENDPOINT_URL_S3"
	S3PathStyle           Var = "CELLOS_FLEET_S3_PATH_STYLE"
	MaxSpecBytes          Var = "CELLOS_FLEET_MAX_SPEC_BYTES"
	OutputBytes           Var = "CELLOS_FLEET_OUTPUT_BYTES"
	LeaseTTL              Var = "CELLOS_FLEET_LEASE_TTL_MS"
	OnLapse               Var = "CELLOS_FLEET_ON_LAPSE"
	MaxAttempts           Var = "CELLOS_FLEET_MAX_ATTEMPTS"
	Retries               Var = "CELLOS_FLEET_RETRIES"
	RetryBackoff          Var = "CELLOS_FLEET_RETRY_BACKOFF_MS"
	DrainTimeout          Var = "CELLOS_FLEET_DRAIN_TIMEOUT_MS"
	CellTimeout           Var = "CELLOS_FLEET_CELL_TIMEOUT_MS"
	StopGrace             Var = "CELLOS_FLEET_STOP_GRACE_MS"
	MetricsAddr           Var = "CELLOS_FLEET_METRICS_ADDR"
	NotifyURL             Var = "CELLOS_FLEET_NOTIFY_URL"
	NotifySubject         Var = "CELLOS_FLEET_NOTIFY_SUBJECT"
	NotifyPollInterval    Var = "CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS"
	NotifyKeys            Var = "CELLOS_FLEET_NOTIFY_KEYS"
	NotifyCreds           Var = "CELLOS_FLEET_NOTIFY_CREDS"
	NotifyTLSCA           Var = "CELLOS_FLEET_NOTIFY_TLS_CA"
	NotifyTLSCert         Var = "CELLOS_FLEET_NOTIFY_TLS_CERT"
	NotifyTLSKey          Var = "CELLOS_FLEET_NOTIFY_TLS_KEY"
	LogLevel              Var = "CELLOS_FLEET_LOG_LEVEL"
	LogFormat             Var = "CELLOS_FLEET_LOG_FORMAT"
	endpointURLAnyService Var = "AWS_ENDPOINT_URL" // EndpointURL's fallback
)

// UIToken is the variable fleetd ui reads its token from: not a setting (no
// flag, so it stays out of ps and shell history), but a variable fleetd
// knows.
const UIToken Var = "CELLOS_FLEET_UI_TOKEN"

// MaxOutputBytes bounds CELLOS_FLEET_OUTPUT_BYTES: each running cell holds
// that much in memory, and its output is one PUT.
const MaxOutputBytes = 64 << 20

// Setting is one configuration value: a flag, the environment variable that
// sets it when the flag is absent, the default when neither is given, and
// where it goes in Config.
type Setting struct {
	Var  Var
	Flag string // without dashes
	// Default is parsed like a given value; "" is no value.
	Default string
	// Help is the one line of fleetd --help.
	Help string
	// DocDefault and Doc are docs/configuration.md's default and meaning
	// (Markdown); empty: Default and Help.
	DocDefault, Doc string
	// set parses v into its field of c; errors go to p.
	set func(c *Config, p *parser, v value)
}

// Settings returns every setting, in --help order.
func Settings() []Setting {
	return []Setting{
		{Var: Bucket, Flag: "bucket", Help: "S3 bucket holding the queue (required)", DocDefault: "required", Doc: "bucket",
			set: trimmed(func(c *Config) *string { return &c.Bucket })},
		{Var: Prefix, Flag: "prefix", Default: "fleet", Help: "key prefix of the queue; a trailing / is trimmed", Doc: "key prefix",
			set: text(func(c *Config) *string { return &c.Prefix })},
		{Var: QueueName, Flag: "queue-name", Help: "queue lane below the prefix (empty: flat layout)", Doc: "queue lane below the prefix (trimmed)",
			set: trimmed(func(c *Config) *string { return &c.QueueName })},
		{Var: PoolID, Flag: "pool-id", Help: "placement pool of this runner (empty: take every spec)", Doc: "placement pool of this runner (trimmed)",
			set: trimmed(func(c *Config) *string { return &c.PoolID })},
		{Var: Lanes, Flag: "lanes",
			Help:       "serve several lanes with weights, e.g. critical=6,default=3,low=1 (_ is the prefix's own lane); instead of " + string(QueueName),
			DocDefault: "empty (one lane: `" + string(QueueName) + "`)",
			Doc: "serve several lanes with weights, e.g. `critical=6,default=3,low=1`; `_` is the prefix's own lane; names distinct, weights 1–1000; not with `" +
				string(QueueName) + "` (see Weighted lanes); with `" + string(NotifyURL) + "`, each lane takes its own events",
			set: func(c *Config, p *parser, v value) {
				if strings.TrimSpace(v.Raw) == "" {
					return
				}
				lanes, err := parseLanes(v.Raw)
				if err != nil {
					p.fail(v, "name=weight,... with distinct names (_ for the prefix's own lane) and weights from 1 to 1000: "+err.Error())
				}
				c.Lanes = lanes
			}},
		{Var: LaneOrder, Flag: "lane-order", Default: "weighted",
			Help: "weighted (free slots shared by weight, smooth round-robin) or strict (a lane only while every heavier one is empty)",
			Doc:  "`weighted` (free slots by weight) or `strict` (a lane only while every heavier one is empty)",
			set:  flagIf(func(c *Config) *bool { return &c.LaneStrict }, "strict", "weighted", "strict")},
		{Var: Supervisor, Flag: "supervisor", Default: "cellos-supervisor", Help: "binary run as <supervisor> <spec-path>",
			Doc: "run as `<supervisor> <spec-path>`; must resolve at startup",
			set: text(func(c *Config) *string { return &c.Supervisor })},
		{Var: PollInterval, Flag: "poll-interval-ms", Default: "5000", Help: "time between listings of an idle queue",
			set: millis(func(c *Config) *time.Duration { return &c.PollInterval }, 1)},
		{Var: HeartbeatInterval, Flag: "heartbeat-interval-ms", Default: "30000", Help: "time between heartbeat log events",
			Doc: "heartbeat log event interval",
			set: millis(func(c *Config) *time.Duration { return &c.Heartbeat }, 1)},
		{Var: NodeID, Flag: "node-id", Help: "node identity in logs and claims (default: hostname)", DocDefault: "hostname",
			Doc: "node identity in logs, claims, leases, results: 1–128 printable ASCII characters, no spaces; in the hostname default every other character becomes `-`",
			set: func(c *Config, p *parser, v value) {
				c.NodeID = strings.TrimSpace(v.Raw)
				if c.NodeID != "" && !ValidNodeID(c.NodeID) {
					p.fail(v, fmt.Sprintf("1 to %d printable ASCII characters, no spaces", MaxNodeID))
				}
			}},
		{Var: Concurrency, Flag: "concurrency", Default: "1", Help: "cells run at once on this host (1-4096)", Doc: "cells run at once on this host (1–4096)",
			set: integer(func(c *Config) *int { return &c.Concurrency }, 1, 4096)},
		{Var: S3RPS, Flag: "s3-rps", Default: "0", Help: "limit on S3 requests per second, retries included (0: off)", DocDefault: "`0` (off)",
			Doc: "token-bucket limit on all S3 requests of this agent, retries included",
			set: number(func(c *Config) *float64 { return &c.S3RPS })},
		{Var: S3Burst, Flag: "s3-burst", Default: "0", Help: "burst of the S3 request limit (0: the rate, at least 1)", DocDefault: "the rate, ≥ 1",
			Doc: "burst of that limit",
			set: integer(func(c *Config) *int { return &c.S3Burst }, 0, math.MaxInt32)},
		{Var: S3Timeout, Flag: "s3-timeout-ms", Default: "10000", Help: "time limit of one S3 request attempt", Doc: "bound on one S3 request attempt",
			set: millis(func(c *Config) *time.Duration { return &c.S3Timeout }, 100)},
		{Var: S3MaxAttempts, Flag: "s3-max-attempts", Default: "5", Help: "attempts of one S3 request before it is reported failed (backoff with jitter between)",
			Doc: "attempts of one S3 request (backoff with jitter between)",
			set: integer(func(c *Config) *int { return &c.S3Attempts }, 1, 100)},
		{Var: EndpointURL, Flag: "endpoint-url", Help: "S3 endpoint URL (also read from " + string(endpointURLAnyService) + ")", DocDefault: "AWS",
			Doc: "S3-compatible endpoint; also read from `" + string(endpointURLAnyService) + "`",
			set: func(c *Config, p *parser, v value) {
				c.Endpoint = v.Raw
				if c.Endpoint == "" {
					return
				}
				if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					p.fail(v, "an http:// or https:// URL")
				}
			}},
		{Var: S3PathStyle, Flag: "s3-path-style", Help: "path-style S3 addressing (default: true when an endpoint is set)",
			DocDefault: "true when an endpoint is set", Doc: "path-style addressing",
			set: func(c *Config, p *parser, v value) {
				// Unset, it follows the endpoint, which is parsed before it.
				c.PathStyle = c.Endpoint != ""
				if v.Raw != "" {
					c.PathStyle = p.boolean(v)
				}
			}},
		{Var: MaxSpecBytes, Flag: "max-spec-bytes", Default: "1048576", Help: "largest spec accepted; larger ones go to failed/",
			Doc: "larger specs go to `failed/` unread",
			set: integer(func(c *Config) *int64 { return &c.MaxSpecBytes }, 1, 5<<30)},
		{Var: OutputBytes, Flag: "output-bytes", Default: "1048576",
			Help: "keep the last this many bytes of each cell's output (redacted) in output/<id>.txt beside its result (0: off; at most 64 MiB, held in memory per running cell)",
			Doc:  "the last this many bytes of each cell's output go to `output/<id>.txt` with its result (0: off; at most 64 MiB, held in memory per running cell); see \"Output of a spec\"",
			set:  integer(func(c *Config) *int { return &c.OutputBytes }, 0, MaxOutputBytes)},
		{Var: LeaseTTL, Flag: "lease-ttl-ms", Default: "60000",
			Help: "session time-to-live (min 3000): the agent's one heartbeat is renewed every ttl/3; a dead agent's specs come back about 2 ttl after it died",
			Doc:  "session time-to-live (min 3000): the agent's one heartbeat, renewed every ttl/3; see \"The ttl\"",
			set:  millis(func(c *Config) *time.Duration { return &c.LeaseTTL }, int(protocol.MinTTL/time.Millisecond))},
		{Var: OnLapse, Flag: "on-lapse", Default: "freeze",
			Help: "what a cell does while the store cannot be reached in time: freeze (SIGSTOP its process group; thawed when the store answers, killed if its spec was taken over) or stop (SIGTERM; the spec returns to pending/)",
			Doc:  "what a cell does while the store cannot be reached in time: `freeze` (SIGSTOP; thawed when it answers, killed if its spec was taken over) or `stop` (SIGTERM; the spec returns to `pending/`)",
			set:  flagIf(func(c *Config) *bool { return &c.Freeze }, "freeze", "freeze", "stop")},
		{Var: MaxAttempts, Flag: "max-attempts", Default: "3", Help: "runs of a spec before a recovered one goes to failed/",
			Doc: "runs before a recovered spec goes to `failed/`",
			set: integer(func(c *Config) *int { return &c.MaxAttempts }, 1, 1000)},
		{Var: Retries, Flag: "retries", Default: "0", DocDefault: "`0` (off)",
			Help: "times a failed cell (non-zero exit, signal, timeout) runs again, after a backoff, before its spec goes to failed/ (0-1000; fleetd submit --retries sets it per spec)",
			Doc:  "times a failed cell (non-zero exit, signal, timeout) runs again after a backoff before its spec goes to `failed/` (0–1000); `fleetd submit --retries N` sets it per spec (see Retries)",
			set: func(c *Config, p *parser, v value) {
				c.Retries = p.integer(v, 0, 1000)
				// On a tool's command line it is the spec's own limit.
				c.SpecRetries = -1
				if v.FromFlag {
					c.SpecRetries = c.Retries
				}
			}},
		{Var: RetryBackoff, Flag: "retry-backoff-ms", Default: "10000",
			Help: "backoff before a failed cell's first retry; doubles each retry, full jitter, at most 1 h",
			set:  millis(func(c *Config) *time.Duration { return &c.RetryBackoff }, 0)},
		{Var: DrainTimeout, Flag: "drain-timeout-ms", Default: "0", DocDefault: "`0` (wait for every cell)",
			Help: "after SIGTERM, stop cells and requeue their specs after this long (0: wait for every cell)", Doc: "bound on the SIGTERM drain",
			set: millis(func(c *Config) *time.Duration { return &c.DrainTimeout }, 0)},
		{Var: CellTimeout, Flag: "cell-timeout-ms", Default: "0", DocDefault: "`0` (none)",
			Help: "stop a cell running longer than this; its spec fails with reason timeout (0: none)",
			Doc:  "a longer cell is stopped; its spec fails with reason `timeout`",
			set:  millis(func(c *Config) *time.Duration { return &c.CellTimeout }, 0)},
		{Var: StopGrace, Flag: "stop-grace-ms", Default: "10000", Help: "time a stopped cell gets between SIGTERM and SIGKILL",
			Doc: "a stopped cell's time between SIGTERM and SIGKILL",
			set: millis(func(c *Config) *time.Duration { return &c.StopGrace }, 0)},
		{Var: MetricsAddr, Flag: "metrics-addr", DocDefault: "empty (off)",
			Help: "serve /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9464 (empty: off)",
			Doc:  "serve `/metrics`, `/healthz`, `/readyz` and `/depth`, e.g. `127.0.0.1:9464`",
			set: func(c *Config, p *parser, v value) {
				c.MetricsAddr = strings.TrimSpace(v.Raw)
				if c.MetricsAddr == "" {
					return
				}
				if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
					p.fail(v, "host:port")
				}
			}},
		{Var: NotifyURL, Flag: "notify-url", DocDefault: "empty (off: poll only)",
			Help: "NATS server the store publishes bucket events to, e.g. nats://127.0.0.1:4222; comma-separated for a cluster; user:password@ or token@ allowed, never logged (empty: off, poll only)",
			Doc:  "NATS server the store publishes bucket events to, e.g. `nats://127.0.0.1:4222`; comma-separated for a cluster; `tls://` for TLS; `user:password@` or `token@` in the URL, never logged (see Notifications)",
			set:  trimmed(func(c *Config) *string { return &c.Notify.URL })},
		{Var: NotifySubject, Flag: "notify-subject", DocDefault: "required with the URL",
			Help: "subject the store publishes this bucket's events to (required with --notify-url)",
			Doc:  "subject the store publishes this bucket's events to",
			set:  trimmed(func(c *Config) *string { return &c.Notify.Subject })},
		{Var: NotifyPollInterval, Flag: "notify-poll-interval-ms", Default: "60000",
			Help: "time between listings of pending/ while notifications flow: the safety net for lost events",
			Doc:  "poll interval while notifications flow: the safety net for lost events; while they do not, `" + string(PollInterval) + "`",
			set:  millis(func(c *Config) *time.Duration { return &c.Notify.PollInterval }, 1)},
		{Var: NotifyKeys, Flag: "notify-keys", Default: "raw", Help: "how events spell keys: raw (versitygw) or url (URL-encoded: AWS, MinIO)",
			Doc: "how events spell keys: `raw` (versitygw) or `url` (URL-encoded, `+` for a space: AWS, MinIO)",
			set: flagIf(func(c *Config) *bool { return &c.Notify.URLKeys }, "url", "raw", "url")},
		{Var: NotifyCreds, Flag: "notify-creds", Help: "NATS credentials file (user JWT and nkey seed)",
			set: text(func(c *Config) *string { return &c.Notify.Creds })},
		{Var: NotifyTLSCA, Flag: "notify-tls-ca", Help: "CA certificates (PEM) that sign the NATS server's", DocDefault: "empty (system roots)",
			set: text(func(c *Config) *string { return &c.Notify.TLSCA })},
		{Var: NotifyTLSCert, Flag: "notify-tls-cert", Help: "client certificate (PEM) for NATS; with --notify-tls-key",
			Doc: "client certificate (PEM) for NATS; with `" + string(NotifyTLSKey) + "`, both or neither",
			set: text(func(c *Config) *string { return &c.Notify.TLSCert })},
		{Var: NotifyTLSKey, Flag: "notify-tls-key", Help: "client certificate's key (PEM) for NATS",
			set: text(func(c *Config) *string { return &c.Notify.TLSKey })},
		{Var: LogLevel, Flag: "log-level", Default: "info", Help: "debug, info, warn or error",
			set: choice(func(c *Config) *string { return &c.LogLevel }, "debug", "info", "warn", "error")},
		{Var: LogFormat, Flag: "log-format", Default: "json", Help: "json or text",
			set: choice(func(c *Config) *string { return &c.LogFormat }, "json", "text")},
	}
}

// The binders below make a Setting's set from a pointer to its field.

func text(field func(*Config) *string) func(*Config, *parser, value) {
	return func(c *Config, _ *parser, v value) { *field(c) = v.Raw }
}

func trimmed(field func(*Config) *string) func(*Config, *parser, value) {
	return func(c *Config, _ *parser, v value) { *field(c) = strings.TrimSpace(v.Raw) }
}

func integer[T int | int64](field func(*Config) *T, lo, hi int) func(*Config, *parser, value) {
	return func(c *Config, p *parser, v value) { *field(c) = T(p.integer(v, lo, hi)) }
}

func millis(field func(*Config) *time.Duration, lo int) func(*Config, *parser, value) {
	return func(c *Config, p *parser, v value) {
		*field(c) = time.Duration(p.integer(v, lo, math.MaxInt32)) * time.Millisecond
	}
}

func number(field func(*Config) *float64) func(*Config, *parser, value) {
	return func(c *Config, p *parser, v value) { *field(c) = p.float(v) }
}

func choice(field func(*Config) *string, allowed ...string) func(*Config, *parser, value) {
	return func(c *Config, p *parser, v value) { *field(c) = p.oneOf(v, allowed...) }
}

// flagIf sets a bool field: true when the value is on, one of allowed.
func flagIf(field func(*Config) *bool, on string, allowed ...string) func(*Config, *parser, value) {
	return func(c *Config, p *parser, v value) { *field(c) = p.oneOf(v, allowed...) == on }
}

package main

import (
	"bytes"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, _, err := parseConfig(nil, envOf(map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_NODE_ID": "n1"}), &bytes.Buffer{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Bucket: "b", Prefix: "fleet", Supervisor: "cellos-supervisor", NodeID: "n1",
		PollInterval: 5 * time.Second, Heartbeat: 30 * time.Second, Concurrency: 1,
		S3Timeout: 10 * time.Second, S3Attempts: 5,
		MaxSpecBytes: 1 << 20, OutputBytes: 1 << 20, LeaseTTL: time.Minute, MaxAttempts: 3, StopGrace: 10 * time.Second, Freeze: true,
		RetryBackoff: 10 * time.Second, SpecRetries: -1,
		Notify:   NotifyConfig{PollInterval: time.Minute},
		LogLevel: "info", LogFormat: "json",
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestParseConfigFlagsWinAndTrim(t *testing.T) {
	env := map[string]string{
		"CELLOS_FLEET_BUCKET":      "env-bucket",
		"CELLOS_FLEET_CONCURRENCY": "2",
		"CELLOS_FLEET_QUEUE_NAME":  "  lane  ",
		"CELLOS_FLEET_POOL_ID":     " gpu ",
		"AWS_ENDPOINT_URL":         "http://127.0.0.1:9000",
		"CELLOS_FLEET_S3_RPS":      "2.5",
	}
	cfg, _, err := parseConfig([]string{"--concurrency", "8", "--bucket=flag-bucket"}, envOf(env), &bytes.Buffer{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bucket != "flag-bucket" || cfg.Concurrency != 8 {
		t.Errorf("flags did not win: bucket %q concurrency %d", cfg.Bucket, cfg.Concurrency)
	}
	if cfg.QueueName != "lane" || cfg.PoolID != "gpu" {
		t.Errorf("queue %q pool %q, want trimmed", cfg.QueueName, cfg.PoolID)
	}
	if cfg.Endpoint != "http://127.0.0.1:9000" || !cfg.PathStyle {
		t.Errorf("endpoint %q path style %v, want the generic endpoint and path style on", cfg.Endpoint, cfg.PathStyle)
	}
	if cfg.S3RPS != 2.5 || cfg.S3Burst != 3 {
		t.Errorf("rps %v burst %d, want 2.5 and 3", cfg.S3RPS, cfg.S3Burst)
	}
	env["CELLOS_FLEET_S3_PATH_STYLE"] = "false"
	if cfg, _, _ := parseConfig(nil, envOf(env), &bytes.Buffer{}, nil); cfg.PathStyle {
		t.Error("CELLOS_FLEET_S3_PATH_STYLE=false ignored")
	}
}

func TestParseConfigErrorsNameTheSetting(t *testing.T) {
	tests := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"CELLOS_FLEET_BUCKET": " "}, nil, "CELLOS_FLEET_BUCKET is required"},
		{map[string]string{"CELLOS_FLEET_CONCURRENCY": "abc"}, nil, `invalid CELLOS_FLEET_CONCURRENCY="abc"`},
		{map[string]string{"CELLOS_FLEET_CONCURRENCY": "0"}, nil, `invalid CELLOS_FLEET_CONCURRENCY="0"`},
		{nil, []string{"--concurrency=-1"}, `invalid --concurrency="-1"`},
		{map[string]string{"CELLOS_FLEET_POLL_INTERVAL_MS": "5s"}, nil, `invalid CELLOS_FLEET_POLL_INTERVAL_MS="5s"`},
		{map[string]string{"CELLOS_FLEET_HEARTBEAT_INTERVAL_MS": "0"}, nil, `invalid CELLOS_FLEET_HEARTBEAT_INTERVAL_MS="0"`},
		{map[string]string{"CELLOS_FLEET_S3_RPS": "-1"}, nil, `invalid CELLOS_FLEET_S3_RPS="-1"`},
		{map[string]string{"CELLOS_FLEET_S3_PATH_STYLE": "maybe"}, nil, `invalid CELLOS_FLEET_S3_PATH_STYLE="maybe"`},
		{map[string]string{"CELLOS_FLEET_MAX_SPEC_BYTES": "1MB"}, nil, `invalid CELLOS_FLEET_MAX_SPEC_BYTES="1MB"`},
		{map[string]string{"CELLOS_FLEET_OUTPUT_BYTES": "-1"}, nil, `invalid CELLOS_FLEET_OUTPUT_BYTES="-1"`},
		{map[string]string{"CELLOS_FLEET_OUTPUT_BYTES": "1MiB"}, nil, `invalid CELLOS_FLEET_OUTPUT_BYTES="1MiB"`},
		{nil, []string{"--output-bytes=67108865"}, `invalid --output-bytes="67108865"`},
		{map[string]string{"CELLOS_FLEET_LOG_LEVEL": "loud"}, nil, `invalid CELLOS_FLEET_LOG_LEVEL="loud"`},
		{map[string]string{"CELLOS_FLEET_LOG_FORMAT": "xml"}, nil, `invalid CELLOS_FLEET_LOG_FORMAT="xml"`},
		{map[string]string{"CELLOS_FLEET_LEASE_TTL_MS": "10"}, nil, `invalid CELLOS_FLEET_LEASE_TTL_MS="10"`},
		{nil, []string{"--no-such-flag"}, "no-such-flag"},
		{nil, []string{"stray"}, `unexpected argument "stray"`},
		{map[string]string{"CELLOS_FLEET_METRICS_ADDR": "9464"}, nil, `invalid CELLOS_FLEET_METRICS_ADDR="9464"`},
		{map[string]string{"CELLOS_FLEET_NOTIFY_URL": "http://u:hunter2@127.0.0.1:4222", "CELLOS_FLEET_NOTIFY_SUBJECT": "s"}, nil, "invalid CELLOS_FLEET_NOTIFY_URL (value not shown"},
		{map[string]string{"CELLOS_FLEET_NOTIFY_URL": "nats://127.0.0.1:4222"}, nil, `invalid CELLOS_FLEET_NOTIFY_SUBJECT=""`},
		{map[string]string{"CELLOS_FLEET_NOTIFY_URL": "nats://127.0.0.1:4222", "CELLOS_FLEET_NOTIFY_SUBJECT": "s", "CELLOS_FLEET_NOTIFY_TLS_CERT": "c.pem"}, nil, `invalid CELLOS_FLEET_NOTIFY_TLS_KEY=""`},
		{map[string]string{"CELLOS_FLEET_NOTIFY_KEYS": "base64"}, nil, `invalid CELLOS_FLEET_NOTIFY_KEYS="base64"`},
		{map[string]string{"CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS": "0"}, nil, `invalid CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS="0"`},
	}
	for _, tt := range tests {
		env := map[string]string{"CELLOS_FLEET_BUCKET": "b"}
		for k, v := range tt.env {
			env[k] = v
		}
		var stdout, stderr bytes.Buffer
		code := run(tt.args, envOf(env), nil, nil, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tt.want) || strings.Count(stderr.String(), "\n") != 1 || strings.Contains(stderr.String(), "hunter2") {
			t.Errorf("run(%v, %v) = %d, stderr %q; want 2 and one line containing %q", tt.args, tt.env, code, stderr.String(), tt.want)
		}
	}
}

func TestParseConfigNotify(t *testing.T) {
	env := map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_NOTIFY_URL": " nats://a:1,tls://b:2 ",
		"CELLOS_FLEET_NOTIFY_SUBJECT": "s3.events", "CELLOS_FLEET_NOTIFY_KEYS": "URL", "CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS": "30000"}
	cfg, _, err := parseConfig([]string{"--notify-subject", "s3.fleet"}, envOf(env), &bytes.Buffer{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := NotifyConfig{URL: "nats://a:1,tls://b:2", Subject: "s3.fleet", PollInterval: 30 * time.Second, URLKeys: true}
	if cfg.Notify != want {
		t.Errorf("notify:\n got %+v\nwant %+v", cfg.Notify, want)
	}
}

func TestRunVersionReadsNoConfig(t *testing.T) {
	for _, arg := range []string{"--version", "-V"} {
		var stdout, stderr bytes.Buffer
		// No bucket, a bad value: --version must not look.
		code := run([]string{arg}, envOf(map[string]string{"CELLOS_FLEET_CONCURRENCY": "bad"}), nil, nil, &stdout, &stderr)
		out := stdout.String()
		if code != 0 || !strings.HasPrefix(out, "fleetd "+version+" (") || !strings.HasSuffix(out, ")\n") || stderr.Len() != 0 {
			t.Errorf("run(%s) = %d, %q, %q", arg, code, out, stderr.String())
		}
	}
}

func TestRunHelpListsEverySetting(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, envOf(nil), nil, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, s := range settings {
		if !strings.Contains(stdout.String(), "--"+s.flag) || !strings.Contains(stdout.String(), s.env) {
			t.Errorf("--help lacks %s / %s", s.flag, s.env)
		}
	}
	if !strings.Contains(stdout.String(), "cellos-supervisor") || !strings.Contains(stdout.String(), "5000") {
		t.Error("--help does not show defaults")
	}
}

func TestRunRefusesMissingSupervisor(t *testing.T) {
	var stdout, stderr bytes.Buffer
	env := map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_SUPERVISOR": "/nonexistent/cellos-supervisor"}
	if code := run(nil, envOf(env), nil, nil, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "CELLOS_FLEET_SUPERVISOR") {
		t.Errorf("run = %d, %q; want 2 naming CELLOS_FLEET_SUPERVISOR", code, stderr.String())
	}
}

func TestVersionString(t *testing.T) {
	old := revision
	defer func() { revision = old }()
	revision = "0123456789abcdef"
	if got, want := versionString(), "fleetd "+version+" (0123456)"; got != want {
		t.Errorf("versionString = %q, want %q", got, want)
	}
}

func TestNodeID(t *testing.T) {
	long := strings.Repeat("n", maxNodeID)
	tests := []struct {
		id    string
		valid bool
	}{
		{"node-1", true},
		{"host.example.com", true},
		{"a_b:c@d/e", true},
		{long, true},
		{long + "n", false},
		{"a\nb", false},
		{"a\x00b", false},
		{"a\x7fb", false},
		{"a b", false},
		{"a\tb", false},
		{"nœud", false},
		{"\xff", false},
	}
	for _, tt := range tests {
		env := map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_NODE_ID": tt.id}
		cfg, _, err := parseConfig(nil, envOf(env), &bytes.Buffer{}, nil)
		if tt.valid {
			if err != nil || cfg.NodeID != tt.id {
				t.Errorf("node id %q: %v, node %q; want accepted", tt.id, err, cfg.NodeID)
			}
			continue
		}
		// A bad setting parsed after the node id keeps run from starting the
		// agent if the node id is let through.
		env["CELLOS_FLEET_LOG_FORMAT"] = "xml"
		var stdout, stderr bytes.Buffer
		if code := run(nil, envOf(env), nil, nil, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "invalid CELLOS_FLEET_NODE_ID=") {
			t.Errorf("node id %q: run = %d, %q; want 2 naming CELLOS_FLEET_NODE_ID", tt.id, code, stderr.String())
		}
		delete(env, "CELLOS_FLEET_NODE_ID")
		stderr.Reset()
		if code := run([]string{"--node-id", tt.id}, envOf(env), nil, nil, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "invalid --node-id=") {
			t.Errorf("--node-id %q: run = %d, %q; want 2 naming --node-id", tt.id, code, stderr.String())
		}
	}
}

func TestSanitizeNodeID(t *testing.T) {
	tests := []struct{ host, want string }{
		{"runner-7", "runner-7"},
		{"hôte-7", "h-te-7"},
		{"日本", "--"},
		{"a b\tc", "a-b-c"},
		{"x\xffy", "x-y"},
		{strings.Repeat("h", 300), strings.Repeat("h", maxNodeID)},
		{"", "-"},
	}
	for _, tt := range tests {
		got := sanitizeNodeID(tt.host)
		if got != tt.want || !validNodeID(got) {
			t.Errorf("sanitizeNodeID(%q) = %q (valid %v), want %q", tt.host, got, validNodeID(got), tt.want)
		}
	}
}

func TestUnknownVariables(t *testing.T) {
	environ := []string{
		"CELLOS_FLEET_CONCURENCY=8",
		"CELLOS_FLEET_BUCKET=b",
		"CELLOS_FLEET_POLL_INTERVAL=100",
		"CELLOS_FLEET_NODEID=n",
		"CELLOS_FLEET_LOGLEVEL=debug",
		"CELLOS_FLEET_BUKET=x",
		"CELLOS_SUPERVISOR_FOO=1", // not fleetd's
		"PATH=/bin",
	}
	want := map[string]string{
		"CELLOS_FLEET_CONCURENCY":    "CELLOS_FLEET_CONCURRENCY",
		"CELLOS_FLEET_POLL_INTERVAL": "CELLOS_FLEET_POLL_INTERVAL_MS",
		"CELLOS_FLEET_NODEID":        "CELLOS_FLEET_NODE_ID",
		"CELLOS_FLEET_LOGLEVEL":      "CELLOS_FLEET_LOG_LEVEL",
		"CELLOS_FLEET_BUKET":         "CELLOS_FLEET_BUCKET",
	}
	got := unknownVariables(environ)
	if !maps.Equal(got, want) {
		t.Errorf("unknownVariables = %v, want %v", got, want)
	}
	if len(unknownVariables([]string{"CELLOS_FLEET_BUCKET=b", "HOME=/root"})) != 0 {
		t.Error("known variables reported as unknown")
	}

	// A tool warns once on stderr, naming each unknown variable and its match.
	var stdout, stderr bytes.Buffer
	run([]string{"status", "--help"}, envOf(nil), environ, nil, &stdout, &stderr)
	line := stderr.String()
	if strings.Count(line, "\n") != 1 || !strings.Contains(line, "CELLOS_FLEET_CONCURENCY (did you mean CELLOS_FLEET_CONCURRENCY?)") ||
		!strings.Contains(line, "CELLOS_FLEET_NODEID (did you mean CELLOS_FLEET_NODE_ID?)") {
		t.Errorf("tool stderr = %q, want one warning line naming every unknown variable", line)
	}
}

func TestLevenshtein(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"a", "", 1}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"CONCURENCY", "CONCURRENCY", 1}, {"ab", "ba", 2}} {
		if got := levenshtein(tt.a, tt.b); got != tt.want {
			t.Errorf("levenshtein(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestParseConfigRetries(t *testing.T) {
	env := map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_NODE_ID": "n1", "CELLOS_FLEET_RETRIES": "3", "CELLOS_FLEET_RETRY_BACKOFF_MS": "250"}
	cfg, _, err := parseConfig(nil, envOf(env), &bytes.Buffer{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Retries != 3 || cfg.RetryBackoff != 250*time.Millisecond || cfg.SpecRetries != -1 {
		t.Errorf("from the environment: retries %d backoff %v spec retries %d, want 3, 250ms, -1 (an agent's default is no spec's own limit)",
			cfg.Retries, cfg.RetryBackoff, cfg.SpecRetries)
	}
	// On the command line (fleetd submit --retries 0) it is the spec's own.
	cfg, _, err = parseConfig([]string{"--retries", "0"}, envOf(env), &bytes.Buffer{}, nil)
	if err != nil || cfg.SpecRetries != 0 {
		t.Errorf("--retries 0: spec retries %d (err %v), want 0", cfg.SpecRetries, err)
	}
	for _, bad := range []map[string]string{{"CELLOS_FLEET_RETRIES": "-1"}, {"CELLOS_FLEET_RETRIES": "1001"}, {"CELLOS_FLEET_RETRY_BACKOFF_MS": "soon"}} {
		e := maps.Clone(env)
		maps.Copy(e, bad)
		_, _, err := parseConfig(nil, envOf(e), &bytes.Buffer{}, nil)
		for name := range bad {
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("%v: err %v, want one naming %s", bad, err, name)
			}
		}
	}
}

package main

import (
	"bytes"
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
		MaxSpecBytes: 1 << 20, LeaseTTL: time.Minute, MaxAttempts: 3, StopGrace: 10 * time.Second,
		LogLevel: "info", LogFormat: "json",
	}
	if cfg != want {
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
		{map[string]string{"CELLOS_FLEET_LOG_LEVEL": "loud"}, nil, `invalid CELLOS_FLEET_LOG_LEVEL="loud"`},
		{map[string]string{"CELLOS_FLEET_LOG_FORMAT": "xml"}, nil, `invalid CELLOS_FLEET_LOG_FORMAT="xml"`},
		{map[string]string{"CELLOS_FLEET_LEASE_TTL_MS": "10"}, nil, `invalid CELLOS_FLEET_LEASE_TTL_MS="10"`},
		{nil, []string{"--no-such-flag"}, "no-such-flag"},
		{nil, []string{"stray"}, `unexpected argument "stray"`},
		{map[string]string{"CELLOS_FLEET_METRICS_ADDR": "9464"}, nil, `invalid CELLOS_FLEET_METRICS_ADDR="9464"`},
	}
	for _, tt := range tests {
		env := map[string]string{"CELLOS_FLEET_BUCKET": "b"}
		for k, v := range tt.env {
			env[k] = v
		}
		var stdout, stderr bytes.Buffer
		code := run(tt.args, envOf(env), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tt.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("run(%v, %v) = %d, stderr %q; want 2 and one line containing %q", tt.args, tt.env, code, stderr.String(), tt.want)
		}
	}
}

func TestRunVersionReadsNoConfig(t *testing.T) {
	for _, arg := range []string{"--version", "-V"} {
		var stdout, stderr bytes.Buffer
		// No bucket, a bad value: --version must not look.
		code := run([]string{arg}, envOf(map[string]string{"CELLOS_FLEET_CONCURRENCY": "bad"}), &stdout, &stderr)
		out := stdout.String()
		if code != 0 || !strings.HasPrefix(out, "fleetd "+version+" (") || !strings.HasSuffix(out, ")\n") || stderr.Len() != 0 {
			t.Errorf("run(%s) = %d, %q, %q", arg, code, out, stderr.String())
		}
	}
}

func TestRunHelpListsEverySetting(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, envOf(nil), &stdout, &stderr); code != 0 {
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
	if code := run(nil, envOf(env), &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "CELLOS_FLEET_SUPERVISOR") {
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

package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/cellos/fleetd/internal/config"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
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
	for _, s := range config.Settings() {
		if !strings.Contains(stdout.String(), "--"+s.Flag) || !strings.Contains(stdout.String(), string(s.Var)) {
			t.Errorf("--help lacks %s / %s", s.Flag, s.Var)
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
	long := strings.Repeat("n", config.MaxNodeID)
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
		cfg, err := config.FromEnv(envOf(env))
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

func TestToolWarnsOfUnknownVariables(t *testing.T) {
	environ := []string{"CELLOS_FLEET_CONCURENCY=8", "CELLOS_FLEET_BUCKET=b", "CELLOS_FLEET_NODEID=n"}

	// A tool warns once on stderr, naming each unknown variable and its match.
	var stdout, stderr bytes.Buffer
	run([]string{"status", "--help"}, envOf(nil), environ, nil, &stdout, &stderr)
	line := stderr.String()
	if strings.Count(line, "\n") != 1 || !strings.Contains(line, "CELLOS_FLEET_CONCURENCY (did you mean CELLOS_FLEET_CONCURRENCY?)") ||
		!strings.Contains(line, "CELLOS_FLEET_NODEID (did you mean CELLOS_FLEET_NODE_ID?)") {
		t.Errorf("tool stderr = %q, want one warning line naming every unknown variable", line)
	}
}

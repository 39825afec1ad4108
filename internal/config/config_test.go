package config

import (
	"flag"
	"io"
	"maps"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// parse reads the settings from args and env as fleetd does.
func parse(args []string, getenv func(string) string) (Config, error) {
	fs := flag.NewFlagSet("fleetd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	return f.Load(getenv)
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := parse(nil, envOf(map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_NODE_ID": "n1"}))
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
	cfg, err := parse([]string{"--concurrency", "8", "--bucket=flag-bucket"}, envOf(env))
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
	if cfg, _ := parse(nil, envOf(env)); cfg.PathStyle {
		t.Error("CELLOS_FLEET_S3_PATH_STYLE=false ignored")
	}
}

func TestParseConfigNotify(t *testing.T) {
	env := map[string]string{"CELLOS_FLEET_BUCKET": "b", "CELLOS_FLEET_NOTIFY_URL": " nats://a:1,tls://b:2 ",
		"CELLOS_FLEET_NOTIFY_SUBJECT": "s3.events", "CELLOS_FLEET_NOTIFY_KEYS": "URL", "CELLOS_FLEET_NOTIFY_POLL_INTERVAL_MS": "30000"}
	cfg, err := parse([]string{"--notify-subject", "s3.fleet"}, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	want := NotifyConfig{URL: "nats://a:1,tls://b:2", Subject: "s3.fleet", PollInterval: 30 * time.Second, URLKeys: true}
	if cfg.Notify != want {
		t.Errorf("notify:\n got %+v\nwant %+v", cfg.Notify, want)
	}
}

func TestSanitizeNodeID(t *testing.T) {
	tests := []struct{ host, want string }{
		{"runner-7", "runner-7"},
		{"hôte-7", "h-te-7"},
		{"日本", "--"},
		{"a b\tc", "a-b-c"},
		{"x\xffy", "x-y"},
		{strings.Repeat("h", 300), strings.Repeat("h", MaxNodeID)},
		{"", "-"},
	}
	for _, tt := range tests {
		got := SanitizeNodeID(tt.host)
		if got != tt.want || !ValidNodeID(got) {
			t.Errorf("SanitizeNodeID(%q) = %q (valid %v), want %q", tt.host, got, ValidNodeID(got), tt.want)
		}
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
	cfg, err := parse(nil, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Retries != 3 || cfg.RetryBackoff != 250*time.Millisecond || cfg.SpecRetries != -1 {
		t.Errorf("from the environment: retries %d backoff %v spec retries %d, want 3, 250ms, -1 (an agent's default is no spec's own limit)",
			cfg.Retries, cfg.RetryBackoff, cfg.SpecRetries)
	}
	// On the command line (fleetd submit --retries 0) it is the spec's own.
	cfg, err = parse([]string{"--retries", "0"}, envOf(env))
	if err != nil || cfg.SpecRetries != 0 {
		t.Errorf("--retries 0: spec retries %d (err %v), want 0", cfg.SpecRetries, err)
	}
	for _, bad := range []map[string]string{{"CELLOS_FLEET_RETRIES": "-1"}, {"CELLOS_FLEET_RETRIES": "1001"}, {"CELLOS_FLEET_RETRY_BACKOFF_MS": "soon"}} {
		e := maps.Clone(env)
		maps.Copy(e, bad)
		_, err := parse(nil, envOf(e))
		for name := range bad {
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("%v: err %v, want one naming %s", bad, err, name)
			}
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
	got := Unknown(environ)
	if !maps.Equal(got, want) {
		t.Errorf("Unknown = %v, want %v", got, want)
	}
	if len(Unknown([]string{"CELLOS_FLEET_BUCKET=b", "HOME=/root"})) != 0 {
		t.Error("known variables reported as unknown")
	}

}

// TestReferenceIsCurrent: docs/configuration.md is what the settings say;
// after changing one, run go generate ./internal/config.
func TestReferenceIsCurrent(t *testing.T) {
	var want strings.Builder
	if err := WriteReference(&want); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want.String() {
		t.Error("docs/configuration.md is stale: run go generate ./internal/config")
	}
	for _, s := range Settings() {
		if !strings.Contains(string(got), "`"+string(s.Var)+"` | `--"+s.Flag+"`") {
			t.Errorf("docs/configuration.md lacks %s", s.Var)
		}
	}
}

// TestSettingsAreWellFormed: each setting has its own variable and flag,
// help, and a field to go to; and every default parses.
func TestSettingsAreWellFormed(t *testing.T) {
	vars, flags := map[Var]bool{}, map[string]bool{}
	for _, s := range Settings() {
		if vars[s.Var] || flags[s.Flag] || s.Flag == "" || s.Help == "" || s.set == nil {
			t.Errorf("setting %s (--%s): duplicate, or without flag, help or field", s.Var, s.Flag)
		}
		vars[s.Var], flags[s.Flag] = true, true
		if s.Var != EndpointURL && !strings.HasPrefix(string(s.Var), variablePrefix) {
			t.Errorf("%s is not a %s* variable", s.Var, variablePrefix)
		}
	}
	if _, err := FromEnv(envOf(map[string]string{string(Bucket): "b", string(NodeID): "n"})); err != nil {
		t.Errorf("the defaults do not parse: %v", err)
	}
}

// TestEachSettingReachesItsField: a value given for a setting changes
// Config, in fields no other setting's value changes alone, so no setter is
// bound to another's field.
func TestEachSettingReachesItsField(t *testing.T) {
	base := map[string]string{string(Bucket): "b", string(NodeID): "n"}
	def, err := FromEnv(envOf(base))
	if err != nil {
		t.Fatal(err)
	}
	given := map[Var]string{
		Bucket: "other", Prefix: "p2", QueueName: "q", PoolID: "gpu", Lanes: "a=1", LaneOrder: "strict", Supervisor: "/bin/true",
		PollInterval: "7", HeartbeatInterval: "7", NodeID: "n2", Concurrency: "7", S3RPS: "7", S3Burst: "7", S3Timeout: "700",
		S3MaxAttempts: "7", EndpointURL: "http://h:1", S3PathStyle: "true", MaxSpecBytes: "7", OutputBytes: "7", LeaseTTL: "7000",
		OnLapse: "stop", MaxAttempts: "7", Retries: "7", RetryBackoff: "7", DrainTimeout: "7", CellTimeout: "7", StopGrace: "7",
		MetricsAddr: "h:1", NotifyURL: "", NotifySubject: "s", NotifyPollInterval: "7", NotifyKeys: "url", NotifyCreds: "c",
		NotifyTLSCA: "ca", NotifyTLSCert: "", NotifyTLSKey: "k", LogLevel: "debug", LogFormat: "text",
	}
	seen := map[string]Var{}
	for _, s := range Settings() {
		v, ok := given[s.Var]
		if !ok {
			t.Errorf("no test value for %s", s.Var)
			continue
		}
		if v == "" {
			continue // checked with others (notify URL, TLS cert)
		}
		env := maps.Clone(base)
		env[string(s.Var)] = v
		cfg, err := FromEnv(envOf(env))
		if err != nil {
			t.Errorf("%s=%s: %v", s.Var, v, err)
			continue
		}
		fields := changed(reflect.ValueOf(cfg), reflect.ValueOf(def), "")
		if fields == "" {
			t.Errorf("%s=%s changes nothing in Config", s.Var, v)
		}
		if other, ok := seen[fields]; ok {
			t.Errorf("%s and %s both change only %s", other, s.Var, fields)
		}
		seen[fields] = s.Var
	}
}

// changed names the fields (Notify's by theirs) in which a and b differ.
func changed(a, b reflect.Value, prefix string) string {
	var names []string
	for i := range a.NumField() {
		name := prefix + a.Type().Field(i).Name
		if a.Field(i).Kind() == reflect.Struct {
			if n := changed(a.Field(i), b.Field(i), name+"."); n != "" {
				names = append(names, n)
			}
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			names = append(names, name)
		}
	}
	return strings.Join(names, ",")
}

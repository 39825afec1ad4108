package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestCLIHelpAndVersion: help answers the question asked, with no settings.
func TestCLIHelpAndVersion(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{[]string{"help"}, 0, "fleetd submit FILE", ""},
		{[]string{"help", "requeue"}, 0, "--older-than", ""},
		{[]string{"version"}, 0, "fleetd " + version, ""},
		{[]string{"submit", "--help"}, 0, "FILE - reads one spec from standard input", ""},
		{[]string{"status", "--help"}, 0, "fleetd status [--json]", ""},
		{[]string{"submit"}, 2, "", "submit: no FILE given"},
		{[]string{"inspect"}, 2, "", "give exactly one ID"},
		{[]string{"requeue", "--failed", "--older-than", "1x"}, 2, "", "invalid value \"1x\" for flag --older-than: want a duration such as 90s, 15m, 2h or 7d"},
		{[]string{"status", "--nope"}, 2, "", "flag provided but not defined: --nope"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(c.args, envOf(nil), nil, nil, &stdout, &stderr)
		if code != c.code || !strings.Contains(stdout.String(), c.out) || !strings.Contains(stderr.String(), c.err) {
			t.Errorf("fleetd %v = %d, stdout %q, stderr %q; want %d, %q, %q", c.args, code, stdout.String(), stderr.String(), c.code, c.out, c.err)
		}
	}
}

// TestCLISubmitStdinAndJSONShapes: submit - reads standard input; status
// --json has every count, an empty list as [], ages as non-negative numbers.
func TestCLISubmitStdinAndJSONShapes(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	code, out, errOut := runCLIStdin(t, b, `{"spec":{"id":"from-stdin"}}`, "submit", "-")
	if code != 0 || !strings.Contains(out, "submitted from-stdin") {
		t.Fatalf("submit - = %d %q %q", code, out, errOut)
	}
	if code, _, errOut := runCLIStdin(t, b, `{"spec":{}}`, "submit", "-"); code != 2 || !strings.Contains(errOut, "no spec id") {
		t.Errorf("submit - without an id = %d %q, want 2 and a request for --id", code, errOut)
	}
	b.putRaw(b.key("leases", "running"), []byte(`{"node":"host-7","attempts":1,"state":"running"}`))
	code, out, errOut = runCLI(t, b, "status", "--json")
	if code != 0 {
		t.Fatalf("status --json = %d %q", code, errOut)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatal(err)
	}
	var counts map[string]int
	_ = json.Unmarshal(raw["counts"], &counts)
	for _, st := range []string{"pending", "claimed", "completed", "failed"} {
		if _, ok := counts[st]; !ok {
			t.Errorf("status --json counts lack %q: %s", st, raw["counts"])
		}
	}
	var inFlight []map[string]any
	_ = json.Unmarshal(raw["in_flight"], &inFlight)
	if len(inFlight) != 1 {
		t.Fatalf("in_flight = %s", raw["in_flight"])
	}
	if age, ok := inFlight[0]["lease_age_seconds"].(float64); !ok || age < 0 {
		t.Errorf("lease_age_seconds = %v, want a number >= 0", inFlight[0]["lease_age_seconds"])
	}
	empty := newBucket(t)
	if _, out, _ := runCLI(t, empty, "status", "--json"); !strings.Contains(out, `"in_flight": []`) {
		t.Errorf("status --json on an empty queue: %s, want in_flight []", out)
	}
}

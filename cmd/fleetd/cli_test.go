package main

import (
	"bytes"
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

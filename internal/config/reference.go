package config

import (
	"cmp"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

//go:generate go run ./gendoc ../../docs/configuration.md

// WriteHelp writes the settings' table of fleetd --help, then the rows in
// more (flag, variable, default, meaning) in the same columns.
func WriteHelp(w io.Writer, more ...[4]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FLAG\tVARIABLE\tDEFAULT\tMEANING")
	for _, s := range Settings() {
		fmt.Fprintf(tw, "--%s\t%s\t%s\t%s\n", s.Flag, s.Var, cmp.Or(s.Default, "-"), s.Help)
	}
	for _, r := range more {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r[0], r[1], r[2], r[3])
	}
	return tw.Flush()
}

// WriteReference writes docs/configuration.md: every setting, generated
// from Settings (go generate ./internal/config refreshes the file).
func WriteReference(w io.Writer) error {
	var b strings.Builder
	b.WriteString(`# Configuration reference

<!-- Generated from internal/config (Settings) by go generate ./internal/config; do not edit. -->

Every setting is an environment variable and a flag (` + "`fleetd --concurrency 8`" + `); a flag
wins. ` + "`fleetd --help`" + ` prints the same list. A missing bucket or an unparsable or
out-of-range value stops fleetd before any S3 call with exit code 2 and one line naming
the variable (or flag) and the value. A ` + "`" + variablePrefix + "*`" + ` variable fleetd does not know
(a typo such as ` + "`CELLOS_FLEET_CONCURENCY`" + `) is ignored with one warning at startup that
names it and the closest known variable (JSON field ` + "`did_you_mean`" + `). The queue tools
(` + "`fleetd status`" + `, ` + "`submit`" + `, …) read the same settings; each tool's own flags are in
` + "`fleetd help TOOL`" + `.

| variable | flag | default | meaning |
|---|---|---|---|
`)
	for _, s := range Settings() {
		def := s.DocDefault
		if def == "" {
			def = "empty"
			if s.Default != "" {
				def = "`" + s.Default + "`"
			}
		}
		fmt.Fprintf(&b, "| `%s` | `--%s` | %s | %s |\n", s.Var, s.Flag, def, cmp.Or(s.Doc, s.Help))
	}
	fmt.Fprintf(&b, `
`+"`%s`"+` is no setting but is read too: the token `+"`fleetd ui`"+` asks for (a variable,
not a flag, so it stays out of ps and shell history).

Credentials and region come from the AWS SDK's default chain (environment, shared
config and credentials files, web identity, IMDS); the region defaults to `+"`us-east-1`"+`
when none is set. `+"`fleetd --version`"+` (or `+"`-V`"+`) prints `+"`fleetd <semver> (<revision>)`"+` and
reads no configuration.
`, UIToken)
	_, err := io.WriteString(w, b.String())
	return err
}

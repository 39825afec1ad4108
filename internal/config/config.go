// Package config is fleetd's configuration: every setting described once
// (Settings), each bound to its field of Config, so that parsing, --help,
// docs/configuration.md and the check for misspelt variables all come from
// one list. A setting is named in code by its Var constant.
//
// Values come from a flag, else the environment variable, else the default;
// errors name the flag or variable and the value.
package config

import (
	"cmp"
	"flag"
	"fmt"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

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

// UsageError is a bad flag or setting: fleetd exits with status 2.
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return UsageError{fmt.Sprintf(format, args...)}
}

// ErrNoBucket: the one setting with no default is missing.
var ErrNoBucket = UsageError{string(Bucket) + " is required (or " + flagOf(Bucket) + ")"}

// flagOf returns the flag of the setting read from v, with its dashes.
func flagOf(v Var) string {
	for _, s := range Settings() {
		if s.Var == v {
			return "--" + s.Flag
		}
	}
	return ""
}

// Flags are the settings' flags on one command line.
type Flags struct {
	fs     *flag.FlagSet
	values map[Var]*string
}

// AddFlags declares every setting's flag on fs; parse fs, then Load.
func AddFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, values: map[Var]*string{}}
	for _, s := range Settings() {
		f.values[s.Var] = fs.String(s.Flag, "", s.Help)
	}
	return f
}

// FromEnv is Load with no command line: the environment, then defaults.
func FromEnv(getenv func(string) string) (Config, error) {
	return (*Flags)(nil).Load(getenv)
}

// value is a setting's raw value and where it came from.
type value struct {
	Name string // the flag (--name) or variable it came from
	Raw  string
	// Set: given by the user, not the default; FromFlag: on the command line.
	Set, FromFlag bool
}

// Load reads each setting from its flag if given (f may be nil: none), else
// its variable, else its default, and validates the result. Errors are
// UsageErrors naming the flag or variable, except that of a missing
// hostname.
func (f *Flags) Load(getenv func(string) string) (Config, error) {
	given := map[string]bool{}
	if f != nil {
		f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	}
	values := map[Var]value{}
	var cfg Config
	p := parser{}
	for _, s := range Settings() {
		v := value{Name: string(s.Var), Raw: s.Default}
		switch {
		case given[s.Flag]:
			v = value{Name: "--" + s.Flag, Raw: *f.values[s.Var], Set: true, FromFlag: true}
		case getenv(string(s.Var)) != "":
			v = value{Name: string(s.Var), Raw: getenv(string(s.Var)), Set: true}
		case s.Var == EndpointURL && getenv(string(endpointURLAnyService)) != "":
			v = value{Name: string(endpointURLAnyService), Raw: getenv(string(endpointURLAnyService)), Set: true}
		}
		values[s.Var] = v
		s.set(&cfg, &p, v)
		if s.Var == Bucket && cfg.Bucket == "" {
			return cfg, ErrNoBucket
		}
	}
	if cfg.NodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			return cfg, fmt.Errorf("node id: no %s and no hostname: %w", NodeID, err)
		}
		cfg.NodeID = SanitizeNodeID(h)
	}
	if len(cfg.Lanes) > 0 && cfg.QueueName != "" {
		p.fail(values[Lanes], "lanes or "+string(QueueName)+", not both")
	}
	checkNotify(&p, cfg.Notify, values)
	if p.err != nil {
		return cfg, p.err
	}
	if cfg.S3RPS > 0 && cfg.S3Burst == 0 {
		cfg.S3Burst = max(1, int(math.Ceil(cfg.S3RPS)))
	}
	return cfg, nil
}

// checkNotify checks the notification settings together. A bad URL is named
// without its value, which may hold a password.
func checkNotify(p *parser, n NotifyConfig, values map[Var]value) {
	if n.URL == "" {
		return
	}
	for _, raw := range strings.Split(n.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
			if p.err == nil {
				p.err = Usagef("invalid %s (value not shown: it may hold credentials): want nats://host:port or tls://host:port, comma-separated", values[NotifyURL].Name)
			}
			return
		}
	}
	if n.Subject == "" || strings.ContainsAny(n.Subject, " \t\r\n") {
		p.fail(values[NotifySubject], "the subject the store publishes to (required with "+string(NotifyURL)+"; no spaces)")
	}
	if (n.TLSCert == "") != (n.TLSKey == "") {
		p.fail(values[NotifyTLSKey], "both "+string(NotifyTLSCert)+" and "+string(NotifyTLSKey)+", or neither")
	}
}

// parser converts values and keeps the first error.
type parser struct{ err error }

func (p *parser) fail(v value, want string) {
	if p.err == nil {
		p.err = Usagef("invalid %s=%q: want %s", v.Name, v.Raw, want)
	}
}

func (p *parser) integer(v value, lo, hi int) int {
	n, err := strconv.Atoi(strings.TrimSpace(v.Raw))
	if err != nil || n < lo || n > hi {
		p.fail(v, fmt.Sprintf("an integer from %d to %d", lo, hi))
	}
	return n
}

func (p *parser) float(v value) float64 {
	f, err := strconv.ParseFloat(strings.TrimSpace(v.Raw), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		p.fail(v, "a number >= 0")
	}
	return f
}

func (p *parser) boolean(v value) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(v.Raw))
	if err != nil {
		p.fail(v, "true or false")
	}
	return b
}

func (p *parser) oneOf(v value, allowed ...string) string {
	s := strings.ToLower(strings.TrimSpace(v.Raw))
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	p.fail(v, "one of "+strings.Join(allowed, ", "))
	return ""
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

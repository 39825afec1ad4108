// Package versitygw starts a versitygw S3 server on loopback, for fleetd's
// tests, demo and benchmarks.
package versitygw

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/cellos/fleetd/internal/toolbin"
)

// Version is the versitygw release fleetd is tested against.
const Version = "v1.8.0"

// Server is a running versitygw with a POSIX backend in a private directory.
type Server struct {
	URL       string // http://127.0.0.1:<port>
	AccessKey string
	SecretKey string
	Dir       string // the backend directory: buckets are its subdirectories
	cmd       *exec.Cmd
	exited    chan struct{}
	log       *bytes.Buffer
}

// Binary finds the versitygw binary: $FLEETD_VERSITYGW, else where `make` installs it.
func Binary() (string, error) { return toolbin.Find("FLEETD_VERSITYGW", "versitygw") }

// Options are StartWith's extras.
type Options struct {
	// AccessKey and SecretKey are the root credentials; empty: random ones.
	// A second server over another's directory takes the first's, so one
	// client's requests work on both.
	AccessKey, SecretKey string
	// NATSURL and NATSSubject, if set, make the server publish bucket events
	// to that NATS server and subject.
	NATSURL, NATSSubject string
}

// Start runs bin on a free loopback port, serving dir, and waits until it
// accepts connections. The caller must Stop it.
func Start(bin, dir string) (*Server, error) { return StartWith(bin, dir, Options{}) }

// StartWith is Start with options.
func StartWith(bin, dir string, o Options) (*Server, error) {
	s := &Server{AccessKey: o.AccessKey, SecretKey: o.SecretKey, Dir: dir}
	if s.AccessKey == "" {
		s.AccessKey, s.SecretKey = "fleetd-test-"+token(4), token(16)
	}
	var lastErr error
	for range 5 { // the free port may be taken between probe and bind
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		s.log = &bytes.Buffer{}
		args := []string{"--port", addr, "--quiet"}
		if o.NATSURL != "" {
			args = append(args, "--event-nats-url", o.NATSURL, "--event-nats-topic", o.NATSSubject)
		}
		s.cmd = exec.Command(bin, append(args, "posix", dir)...)
		s.cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
		s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
		// Pdeathsig: the server dies with whoever started it, even one killed
		// before it could Stop it (a test binary timed out, a demo cut short).
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("start versitygw: %w", err)
		}
		s.exited = make(chan struct{})
		go func() {
			_ = s.cmd.Wait()
			close(s.exited)
		}()
		if lastErr = waitListening(addr, s.exited); lastErr == nil {
			s.URL = "http://" + addr
			return s, nil
		}
		s.Stop()
	}
	return nil, fmt.Errorf("versitygw did not start: %w; output: %s", lastErr, strings.TrimSpace(s.log.String()))
}

// Stop kills the server and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
}

// Pid is the server's process id, for reading its resource use.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Env returns the environment that points the AWS SDK and CLI at the server.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=us-east-1",
		"AWS_ENDPOINT_URL_S3=" + s.URL,
	}
}

func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("versitygw exited")
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("versitygw not listening on %s after 30s", addr)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func token(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Command gendoc writes the configuration reference (config.WriteReference)
// to the file named by its argument: go generate ./internal/config.
package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/cellos/fleetd/internal/config"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gendoc FILE")
		os.Exit(2)
	}
	var b bytes.Buffer
	if err := config.WriteReference(&b); err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(os.Args[1], b.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
}

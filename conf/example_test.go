package conf

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

const examplePath = "../config.example.toml"

// The example file must stay a valid configuration that changes nothing
// and must document every key: adding an option without documenting it
// fails here.
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, argv0 := range []string{"pasta", "passt"} {
		c, err := Parse(argv0, []string{"--config", examplePath})
		if err != nil {
			t.Fatalf("%s: example doesn't load: %v", argv0, err)
		}
		def, err := Parse(argv0, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.ConfigFile, c.MTUSet = "", false
		if !reflect.DeepEqual(c, def) {
			t.Errorf("%s: loading the example changes the configuration:\n%+v\n%+v", argv0, c, def)
		}
	}
	text := string(data)
	for _, key := range TOMLKeys() {
		re := regexp.MustCompile(`(?m)^#? ?` + regexp.QuoteMeta(key) + ` = `)
		if !re.MatchString(text) {
			t.Errorf("config.example.toml doesn't document key %q (add a commented example)", key)
			continue
		}
		// The option is named in the comment above the key.
		o := optionsByKey[key]
		if o != nil && !strings.Contains(text, "# --"+key) {
			t.Errorf("config.example.toml: no comment naming --%s", key)
		}
	}
}

// Every commented example value is itself valid, in some mode.
func TestExampleValues(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^#? ?([a-z0-9-]+) = (.*)$`)
	n := 0
	for i, line := range strings.Split(string(data), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n++
		snippet := m[1] + " = " + m[2] + "\n"
		var errs []string
		ok := false
		for _, mode := range []Mode{ModePasta, ModePasst} {
			c := Defaults(mode)
			c.VhostUser = mode == ModePasst
			if _, err := applyTOML(&parser{c: c}, "example", []byte(snippet)); err != nil {
				errs = append(errs, err.Error())
				continue
			}
			ok = true
		}
		if !ok {
			t.Errorf("config.example.toml:%d: %q is invalid: %v", i+1, snippet, errs)
		}
	}
	if n < len(TOMLKeys()) {
		t.Errorf("only %d example values for %d keys", n, len(TOMLKeys()))
	}
}

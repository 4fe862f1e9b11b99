package netcfg

import (
	"bufio"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/gopasta/gopasta/conf"
)

// readResolvConf returns the nameservers and search domains of a
// resolv.conf file, in order. A missing file yields nothing.
func readResolvConf(path string) (servers []netip.Addr, search []string) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	return parseResolvConf(f)
}

// parseResolvConf is readResolvConf on an open file.
func parseResolvConf(f io.Reader) (servers []netip.Addr, search []string) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		switch fields[0] {
		case "nameserver":
			// Zones ("fe80::1%eth0") cannot be used from the guest.
			if a, err := netip.ParseAddr(fields[1]); err == nil && a.Zone() == "" {
				servers = append(servers, a.Unmap())
			}
		case "search", "domain":
			search = fields[1:]
		}
	}
	return servers, search
}

// resolveDNS fills the DNS defaults: the host resolver that --dns-forward
// leads to (the first nameserver of each family, even a loopback one such
// as systemd-resolved's 127.0.0.53, since gopasta queries it from the host
// side), the servers to offer the guest, and the search list.
func resolveDNS(cfg *conf.Config, path string, warn func(string, ...any)) {
	servers, search := readResolvConf(path)
	if len(cfg.DNSHost) == 0 {
		var have4, have6 bool
		for _, a := range servers {
			if a.Is4() && !have4 {
				cfg.DNSHost, have4 = append(cfg.DNSHost, a), true
			} else if a.Is6() && !have6 {
				cfg.DNSHost, have6 = append(cfg.DNSHost, a), true
			}
		}
	}
	if len(cfg.DNS) == 0 && !cfg.DNSNone {
		loopback := false
		for _, a := range servers {
			if a.IsLoopback() {
				loopback = true
				continue
			}
			if (a.Is4() && cfg.IPv6Only) || (a.Is6() && cfg.IPv4Only) {
				continue
			}
			cfg.DNS = append(cfg.DNS, a)
		}
		// A loopback resolver is unreachable from the guest as is; the
		// --dns-forward address leads to it.
		if loopback && len(cfg.DNS) == 0 && cfg.Mode == conf.ModePasst {
			passtDNSForward(cfg, servers)
		}
		if loopback && len(cfg.DNS) == 0 {
			for _, a := range []netip.Addr{cfg.DNSForward4, cfg.DNSForward6} {
				if a.IsValid() {
					cfg.DNS = append(cfg.DNS, a)
				}
			}
		}
	}
	if len(servers) == 0 && !cfg.DNSNone && len(cfg.DNS) == 0 {
		warn("couldn't get any nameserver address")
	}
	if len(cfg.Search) == 0 && !cfg.SearchNone {
		cfg.Search = search
	}
}

// passtDNSForward makes the gateway the guest's resolver when the host's is
// on loopback (systemd-resolved's 127.0.0.53) and nothing says otherwise,
// as passt does: a VM has no podman passing --dns-forward, and without it
// the guest would be offered no resolver at all. Queries to the gateway's
// port 53 then go to the loopback resolver (--dns-host), and everything
// else sent to the gateway still reaches the host's loopback.
func passtDNSForward(cfg *conf.Config, servers []netip.Addr) {
	if cfg.NoMapGW {
		return
	}
	for _, a := range servers {
		if !a.IsLoopback() {
			continue
		}
		switch {
		case a.Is4() && !cfg.IPv6Only && !cfg.DNSForward4.IsValid() && cfg.Gateway4.IsValid():
			cfg.DNSForward4 = cfg.Gateway4
		case a.Is6() && !cfg.IPv4Only && !cfg.DNSForward6.IsValid() && cfg.Gateway6.IsValid():
			cfg.DNSForward6 = cfg.Gateway6
		}
	}
}

//! The test network: one network namespace per node, each with its own address on a bridge
//! this harness creates, so a partition is a real cut (iptables in the node's namespace).
//! Everything is named after a per-run tag and removed again on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// One node's host: its namespace and address.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The bridge and the namespaces of a run.
pub struct Net {
    tag: String,
    bridge: String,
    /// The bridge's own address: where the harness (clients, probes) talks from.
    pub gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
    forward_rule: Vec<String>,
}

/// Runs a command; its stderr is the error when it fails.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Each node's link to the bridge, inside its namespace.
const NODE_LINK: &str = "eth0";

/// Which nodes drop packets from which (index → sources it drops), the shape of a partition.
pub type Grudge = BTreeMap<usize, BTreeSet<usize>>;

impl Net {
    /// Creates the bridge and `nodes` namespaces. Needs root, `ip` and `iptables`
    /// (`jepsen/scripts/setup.sh` installs them).
    pub fn create(nodes: usize) -> anyhow::Result<Net> {
        // Unique per run, also between runs of one process: a deleted namespace's devices
        // go away asynchronously, so names are never reused at once.
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("mj{}x{}", pid % 100_000, run % 100);
        let subnet = ((pid + run * 37) % 200) as u8 + 20;
        let gateway = Ipv4Addr::new(10, 213, subnet, 1);
        let bridge = format!("{tag}br");
        let mut net = Net {
            tag: tag.clone(),
            bridge: bridge.clone(),
            gateway,
            hosts: Vec::new(),
            forward_rule: vec![
                "FORWARD".into(),
                "-i".into(),
                bridge.clone(),
                "-o".into(),
                bridge.clone(),
                "-j".into(),
                "ACCEPT".into(),
            ],
        };
        Net::destroy_orphans();
        net.destroy_leftovers();
        sh("ip", &["link", "add", &bridge, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{gateway}/24"), "dev", &bridge],
        )?;
        sh("ip", &["link", "set", &bridge, "up"])?;
        // Bridged traffic crosses the host's FORWARD chain (Docker sets its policy to DROP).
        let mut insert = vec!["-I"];
        insert.extend(net.forward_rule.iter().map(String::as_str));
        sh("iptables", &insert)?;
        for i in 0..nodes {
            let ns = format!("{tag}n{}", i + 1);
            let veth = format!("{tag}v{}", i + 1);
            let ip = Ipv4Addr::new(10, 213, subnet, 11 + i as u8);
            sh("ip", &["netns", "add", &ns])?;
            sh(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", NODE_LINK, "netns", &ns,
                ],
            )?;
            sh("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    NODE_LINK,
                ],
            )?;
            sh("ip", &["-n", &ns, "link", "set", NODE_LINK, "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            net.hosts.push(Host { ns, ip });
        }
        Ok(net)
    }

    /// Namespaces, bridges and FORWARD rules left by runs whose harness died (its pid is gone).
    fn destroy_orphans() {
        let orphan = |name: &str| -> bool {
            let Some(rest) = name.strip_prefix("mj") else {
                return false;
            };
            let Some((pid, _)) = rest.split_once('x') else {
                return false;
            };
            pid.parse::<u32>()
                .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
        };
        if let Ok(list) = sh("ip", &["netns", "list"]) {
            for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if orphan(ns) {
                    let _ = sh("ip", &["netns", "del", ns]);
                }
            }
        }
        if let Ok(links) = sh("ip", &["-br", "link"]) {
            for link in links.lines().filter_map(|l| l.split_whitespace().next()) {
                let link = link.split('@').next().unwrap_or(link);
                if orphan(link) {
                    let _ = sh("ip", &["link", "del", link]);
                }
            }
        }
        if let Ok(rules) = sh("iptables", &["-S", "FORWARD"]) {
            for rule in rules.lines() {
                let words: Vec<&str> = rule.split_whitespace().collect();
                let stale = words.windows(2).any(|w| w[0] == "-i" && orphan(w[1]));
                if stale && words.first() == Some(&"-A") {
                    let mut delete = vec!["-D"];
                    delete.extend_from_slice(&words[1..]);
                    let _ = sh("iptables", &delete);
                }
            }
        }
    }

    /// Namespaces and a bridge left by an earlier run with the same tag (a killed harness).
    fn destroy_leftovers(&self) {
        if let Ok(list) = sh("ip", &["netns", "list"]) {
            for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if ns.starts_with(&format!("{}n", self.tag)) {
                    let _ = sh("ip", &["netns", "del", ns]);
                }
            }
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
        let mut delete = vec!["-D"];
        delete.extend(self.forward_rule.iter().map(String::as_str));
        while sh("iptables", &delete).is_ok() {}
    }

    /// Runs a command inside node `i`'s namespace.
    pub fn exec(&self, i: usize, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", &self.hosts[i].ns, program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Cuts the network as `grudge` says: node `i` drops every packet from each node it holds
    /// a grudge against. Replaces any earlier partition.
    pub fn partition(&self, grudge: &Grudge) -> anyhow::Result<()> {
        self.heal()?;
        for (i, sources) in grudge {
            for j in sources {
                let src = self.hosts[*j].ip.to_string();
                self.exec(*i, "iptables", &["-A", "INPUT", "-s", &src, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Packets dropped so far by the partition rules of each node (evidence the cut bit).
    pub fn dropped_packets(&self) -> Vec<u64> {
        self.dropped_in("INPUT")
    }

    fn dropped_in(&self, chain: &str) -> Vec<u64> {
        (0..self.hosts.len())
            .map(|i| {
                self.exec(i, "iptables", &["-L", chain, "-v", "-n", "-x"])
                    .map(|out| {
                        out.lines()
                            .filter(|l| l.contains("DROP"))
                            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                            .sum()
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Lossy links: each node of `nodes` drops at random `percent` % of the packets it sends
    /// to the other nodes (clients are not affected). Rules sit in OUTPUT, apart from the
    /// partitions' INPUT rules, so either heals without touching the other.
    pub fn lose(&self, nodes: &[usize], percent: u32) -> anyhow::Result<()> {
        let probability = format!("{:.2}", f64::from(percent) / 100.0);
        for &i in nodes {
            for (j, peer) in self.hosts.iter().enumerate() {
                if i == j {
                    continue;
                }
                let dst = peer.ip.to_string();
                self.exec(
                    i,
                    "iptables",
                    &[
                        "-A",
                        "OUTPUT",
                        "-d",
                        &dst,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &probability,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Packets dropped so far by each node's loss rules.
    pub fn lost_packets(&self) -> Vec<u64> {
        self.dropped_in("OUTPUT")
    }

    /// Removes every loss rule.
    pub fn heal_loss(&self) -> anyhow::Result<()> {
        for i in 0..self.hosts.len() {
            self.exec(i, "iptables", &["-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// Whether this kernel has `tc netem` (delay, duplication, reordering): tried on node 0's
    /// link and removed again. `None` when it has; the error `tc` gave otherwise.
    pub fn netem_missing(&self) -> Option<String> {
        let dev = NODE_LINK;
        match self.exec(
            0,
            "tc",
            &["qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms"],
        ) {
            Ok(_) => {
                let _ = self.exec(0, "tc", &["qdisc", "del", "dev", dev, "root"]);
                None
            }
            Err(e) => Some(e.to_string()),
        }
    }

    /// Applies a netem discipline (`args`, e.g. `delay 80ms 40ms`) to everything node `i`
    /// sends.
    pub fn netem(&self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["qdisc", "replace", "dev", NODE_LINK, "root", "netem"];
        all.extend_from_slice(args);
        self.exec(i, "tc", &all).map(|_| ())
    }

    /// Removes node `i`'s netem discipline, if any.
    pub fn heal_netem(&self, i: usize) {
        let _ = self.exec(i, "tc", &["qdisc", "del", "dev", NODE_LINK, "root"]);
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 0..self.hosts.len() {
            self.exec(i, "iptables", &["-F", "INPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (i, h) in self.hosts.iter().enumerate() {
            // Deleting one end of the veth pair deletes both, at once.
            let _ = sh("ip", &["link", "del", &format!("{}v{}", self.tag, i + 1)]);
            let _ = sh("ip", &["netns", "del", &h.ns]);
        }
        self.destroy_leftovers();
    }
}

/// Partition shapes over `n` nodes.
pub mod shapes {
    use super::Grudge;
    use std::collections::BTreeSet;

    /// Every node of `a` drops packets from every node of `b` and back: a clean cut.
    pub fn split(a: &[usize], b: &[usize]) -> Grudge {
        let mut g = Grudge::new();
        for &x in a {
            g.entry(x).or_default().extend(b.iter().copied());
        }
        for &y in b {
            g.entry(y).or_default().extend(a.iter().copied());
        }
        g
    }

    /// Only `a` drops packets from `b`: `b` still hears `a`.
    pub fn one_way(a: &[usize], b: &[usize]) -> Grudge {
        let mut g = Grudge::new();
        for &x in a {
            g.entry(x).or_default().extend(b.iter().copied());
        }
        g
    }

    /// The majorities ring: node `i` hears only its ring neighbours within `n / 2` steps, so
    /// every node sees a majority, and no two see the same one.
    pub fn ring(n: usize) -> Grudge {
        let reach = n / 2;
        let mut g = Grudge::new();
        for i in 0..n {
            let near: BTreeSet<usize> = (1..=reach / 2 + reach % 2)
                .flat_map(|d| [(i + d) % n, (i + n - d) % n])
                .collect();
            let far: BTreeSet<usize> = (0..n).filter(|j| *j != i && !near.contains(j)).collect();
            if !far.is_empty() {
                g.insert(i, far);
            }
        }
        g
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ring_of_five_lets_each_node_see_a_majority_of_its_own() {
            let g = ring(5);
            let mut views = BTreeSet::new();
            for i in 0..5 {
                let cut = g.get(&i).cloned().unwrap_or_default();
                let sees: BTreeSet<usize> = (0..5).filter(|j| !cut.contains(j)).collect();
                assert_eq!(sees.len(), 3, "node {i} sees {sees:?}");
                assert!(sees.contains(&i));
                views.insert(sees);
            }
            assert_eq!(views.len(), 5, "five different majorities");
        }

        #[test]
        fn split_is_symmetric_and_one_way_is_not() {
            let g = split(&[0], &[1, 2]);
            assert!(g[&0].contains(&1) && g[&1].contains(&0) && g[&2].contains(&0));
            let g = one_way(&[0], &[1, 2]);
            assert!(g[&0].contains(&1) && !g.contains_key(&1));
        }
    }
}

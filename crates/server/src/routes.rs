//! The route table built from every module's API table: URL patterns (upstream
//! `@RestRequest` paths and optional paths) to the APIs that share them.

use crate::api::{ApiDef, Method};
use std::collections::HashMap;

#[derive(Debug)]
enum Seg {
    Lit(&'static str),
    Var(&'static str),
}

struct Pattern {
    segs: Vec<Seg>,
    api: &'static ApiDef,
}

impl Pattern {
    fn parse(path: &'static str, api: &'static ApiDef) -> Pattern {
        let segs = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(v) => Seg::Var(v),
                None => Seg::Lit(s),
            })
            .collect();
        Pattern { segs, api }
    }

    /// Upstream normalizes variables by position: `/a/{x}/b` and `/a/{y}/b` are one key.
    fn key(&self) -> String {
        let mut k = String::new();
        let mut i = 0;
        for s in &self.segs {
            k.push('/');
            match s {
                Seg::Lit(l) => k.push_str(l),
                Seg::Var(_) => {
                    k.push_str(&format!("{{{i}}}"));
                    i += 1;
                }
            }
        }
        k
    }

    fn vars(&self) -> usize {
        self.segs.iter().filter(|s| matches!(s, Seg::Var(_))).count()
    }

    fn matches(&self, parts: &[&str]) -> bool {
        self.segs.len() == parts.len()
            && self.segs.iter().zip(parts).all(|(s, p)| match s {
                Seg::Lit(l) => l == p,
                Seg::Var(_) => !p.is_empty(),
            })
    }

    fn extract(&self, parts: &[&str]) -> Vec<(&'static str, String)> {
        self.segs
            .iter()
            .zip(parts)
            .filter_map(|(s, p)| match s {
                Seg::Var(v) => Some((*v, (*p).to_string())),
                Seg::Lit(_) => None,
            })
            .collect()
    }
}

struct Group {
    /// Patterns (one per API registered on this key), all of the same shape.
    patterns: Vec<Pattern>,
    vars: usize,
}

pub struct Routes {
    groups: Vec<Group>,
    literal: HashMap<String, usize>,
    by_name: HashMap<&'static str, &'static ApiDef>,
}

/// The outcome of matching a URL.
pub enum Matched {
    Api(&'static ApiDef, Vec<(&'static str, String)>),
    NoMapping,
    /// Several APIs share the path and none fits the method / body.
    NoAction,
    MethodNotAllowed,
}

impl Routes {
    pub fn new(apis: &[&'static ApiDef]) -> Routes {
        let mut groups: Vec<Group> = Vec::new();
        let mut keys: HashMap<String, usize> = HashMap::new();
        let mut by_name = HashMap::new();
        for api in apis {
            by_name.insert(api.name, *api);
            for path in std::iter::once(&api.path).chain(api.optional_paths) {
                let p = Pattern::parse(path, api);
                let key = p.key();
                let vars = p.vars();
                match keys.get(&key) {
                    Some(&i) => groups[i].patterns.push(p),
                    None => {
                        keys.insert(key, groups.len());
                        groups.push(Group { patterns: vec![p], vars });
                    }
                }
            }
        }
        let literal: Vec<(String, usize)> =
            keys.iter().filter(|(k, _)| !k.contains('{')).map(|(k, i)| (k.clone(), *i)).collect();
        // Fewer variables first: the most specific pattern wins, as with AntPathMatcher.
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by_key(|i| groups[*i].vars);
        let mut sorted = Vec::with_capacity(groups.len());
        let mut remap = vec![0; groups.len()];
        let mut gs: Vec<Option<Group>> = groups.into_iter().map(Some).collect();
        for (new, old) in order.iter().enumerate() {
            remap[*old] = new;
            if let Some(g) = gs[*old].take() {
                sorted.push(g);
            }
        }
        let literal = literal.into_iter().map(|(k, i): (String, usize)| (k, remap[i])).collect();
        Routes { groups: sorted, literal, by_name }
    }

    pub fn api(&self, name: &str) -> Option<&'static ApiDef> {
        self.by_name.get(name).copied()
    }

    pub fn all(&self) -> impl Iterator<Item = &'static ApiDef> + '_ {
        self.by_name.values().copied()
    }

    /// Match `path` (below `/v1`) for `method`; `action_keys` are the top-level keys of a
    /// PUT body (the action name chooses among APIs sharing a path).
    pub fn find(&self, method: Method, path: &str, action_keys: &dyn Fn(&str) -> bool) -> Matched {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let norm = format!("/{}", parts.join("/"));
        let group = match self.literal.get(&norm) {
            Some(&i) => &self.groups[i],
            None => match self.groups.iter().find(|g| g.patterns[0].matches(&parts)) {
                Some(g) => g,
                None => return Matched::NoMapping,
            },
        };
        let pick = |p: &Pattern| Matched::Api(p.api, p.extract(&parts));
        if group.patterns.len() == 1 {
            // Upstream does not check the method when one API owns the path.
            return pick(&group.patterns[0]);
        }
        let chosen = match method {
            Method::Put => {
                let found =
                    group.patterns.iter().find(|p| p.api.method == Method::Put && action_keys(&p.api.action_name()));
                match found {
                    Some(p) => p,
                    // Upstream answers a PUT without a matching action key the same way
                    // whether or not the path has PUT APIs at all.
                    None => return Matched::NoAction,
                }
            }
            m => match group.patterns.iter().find(|p| p.api.method == m) {
                Some(p) => p,
                None => return Matched::MethodNotAllowed,
            },
        };
        pick(chosen)
    }
}

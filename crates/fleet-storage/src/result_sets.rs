//! A job's stored result sets, found by listing: `<prefix>/<tenant>/<job id>/<index>.<ext>`, or
//! with an execution id between the job and the image, `<prefix>/<tenant>/<job id>/<execution
//! id>/<index>.<ext>` (one set per execution of the job). What rebuilds job records from S3 alone
//! starts here.

use fleet_core::ImageFormat;
use uuid::Uuid;

use crate::{ImageStore, StorageError};

/// One image object of a result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    /// The object key.
    pub key: String,
    /// The image's index within its job (the file name's number).
    pub index: u32,
    /// The format its extension names.
    pub format: ImageFormat,
}

/// The images one execution of a job stored (the whole job in the layout without execution ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSet {
    /// The tenant segment of the keys.
    pub tenant: String,
    /// The job.
    pub job_id: Uuid,
    /// The execution segment, when the keys have one.
    pub execution: Option<String>,
    /// Its images, by index.
    pub images: Vec<ListedImage>,
}

impl ListedSet {
    /// Whether it holds exactly images `0..num_images`, all in one format: a whole result set.
    pub fn is_complete(&self, num_images: u32) -> bool {
        let one_format = self.images.windows(2).all(|w| w[0].format == w[1].format);
        one_format
            && self.images.len() == num_images as usize
            && self.images.iter().enumerate().all(|(i, image)| image.index as usize == i)
    }
}

/// The listing prefix of a tenant's images (`<prefix>/<tenant>/`), or of every image under
/// `s3.prefix` when `tenant` is `None`; with `job` (and a tenant), of that job's images.
pub fn results_prefix(prefix: &str, tenant: Option<&str>, job: Option<Uuid>) -> String {
    let prefix = prefix.trim_matches('/');
    let mut out = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    if let Some(tenant) = tenant {
        out.push_str(tenant);
        out.push('/');
        if let Some(job) = job {
            out.push_str(&job.hyphenated().to_string());
            out.push('/');
        }
    }
    out
}

/// Groups keys listed under `prefix` into result sets, ordered by tenant, job and execution;
/// keys that are no image key of either layout (other files, other prefixes) are left out.
pub fn group_result_keys(prefix: &str, keys: &[String]) -> Vec<ListedSet> {
    let prefix = prefix.trim_matches('/');
    let mut sets: std::collections::BTreeMap<(String, Uuid, Option<String>), Vec<ListedImage>> = Default::default();
    for key in keys {
        let rest = if prefix.is_empty() {
            Some(key.as_str())
        } else {
            key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
        };
        let Some((tenant, job_id, execution, image)) = rest.and_then(|rest| parse_image_key(key, rest)) else {
            continue;
        };
        sets.entry((tenant, job_id, execution)).or_default().push(image);
    }
    sets.into_iter()
        .map(|((tenant, job_id, execution), mut images)| {
            images.sort_by_key(|image| image.index);
            ListedSet { tenant, job_id, execution, images }
        })
        .collect()
}

/// `<tenant>/<job id>[/<execution>]/<index>.<ext>` → its parts.
fn parse_image_key(key: &str, rest: &str) -> Option<(String, Uuid, Option<String>, ListedImage)> {
    let parts: Vec<&str> = rest.split('/').collect();
    let (tenant, job, execution, file) = match parts.as_slice() {
        [tenant, job, file] => (*tenant, *job, None, *file),
        [tenant, job, execution, file] => (*tenant, *job, Some((*execution).to_owned()), *file),
        _ => return None,
    };
    let job_id = Uuid::parse_str(job).ok()?;
    let (index, ext) = file.split_once('.')?;
    let format = match ext {
        "png" => ImageFormat::Png,
        "jpg" => ImageFormat::Jpeg,
        "webp" => ImageFormat::Webp,
        _ => return None,
    };
    // Plain decimal only: `01.png` is no key the worker writes.
    if index.is_empty() || (index.len() > 1 && index.starts_with('0')) {
        return None;
    }
    let index = index.parse::<u32>().ok()?;
    Some((tenant.to_owned(), job_id, execution, ListedImage { key: key.to_owned(), index, format }))
}

impl ImageStore {
    /// The result sets stored under `prefix` (`s3.prefix`): of one tenant, or of all; of one
    /// job when `job` is given (without a tenant, every tenant's listing is read to find it).
    pub async fn result_sets(
        &self,
        prefix: &str,
        tenant: Option<&str>,
        job: Option<Uuid>,
    ) -> Result<Vec<ListedSet>, StorageError> {
        let keys = self.list(&results_prefix(prefix, tenant, job)).await?;
        let mut sets = group_result_keys(prefix, &keys);
        if let Some(job) = job {
            sets.retain(|set| set.job_id == job);
        }
        Ok(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn both_layouts_group_by_job_and_execution() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let listed = keys(&[
            &format!("images/acme/{a}/1.png"),
            &format!("images/acme/{a}/0.png"),
            &format!("images/acme/{b}/e2/0.webp"),
            &format!("images/acme/{b}/e1/0.webp"),
            &format!("images/acme/{b}/e1/1.webp"),
            "images/acme/not-a-uuid/0.png",
            &format!("images/acme/{a}/notes.txt"),
            &format!("images/acme/{a}/01.png"),
            &format!("other/acme/{a}/2.png"),
        ]);
        let sets = group_result_keys("/images/", &listed);
        let shape: Vec<_> = sets
            .iter()
            .map(|s| (s.job_id, s.execution.clone(), s.images.iter().map(|i| i.index).collect::<Vec<_>>()))
            .collect();
        assert_eq!(
            shape,
            vec![(a, None, vec![0, 1]), (b, Some("e1".into()), vec![0, 1]), (b, Some("e2".into()), vec![0])]
        );
        assert!(sets[0].is_complete(2) && !sets[0].is_complete(3));
        assert!(sets[1].is_complete(2) && !sets[2].is_complete(2));
        assert_eq!(sets[1].images[0].format, ImageFormat::Webp);
    }

    #[test]
    fn a_set_with_a_gap_or_two_formats_is_not_complete() {
        let a = Uuid::now_v7();
        let gap = group_result_keys("", &keys(&[&format!("t/{a}/0.png"), &format!("t/{a}/2.png")]));
        assert!(!gap[0].is_complete(2));
        let mixed = group_result_keys("", &keys(&[&format!("t/{a}/0.png"), &format!("t/{a}/1.jpg")]));
        assert!(!mixed[0].is_complete(2));
    }

    #[test]
    fn listing_prefixes() {
        let a = Uuid::nil();
        assert_eq!(results_prefix("/images/", None, None), "images/");
        assert_eq!(results_prefix("", Some("t"), None), "t/");
        assert_eq!(results_prefix("p", Some("t"), Some(a)), format!("p/t/{a}/"));
    }
}

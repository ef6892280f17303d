-- hMailServer's tables (MySQL flavour), as far as `appliance import hmailserver` reads them.
-- Written for the tests from hMailServer's public table layout (table and column names, types);
-- columns the import does not read are left out. Statements end with ";" at a line end.
CREATE TABLE hm_settings (
  settingid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  settingname varchar(30) NOT NULL DEFAULT '',
  settingstring varchar(4000) NOT NULL DEFAULT '',
  settinginteger int NOT NULL DEFAULT 0,
  UNIQUE KEY settingname (settingname)
);
CREATE TABLE hm_tcpipports (
  portid bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  portprotocol tinyint NOT NULL,
  portnumber int NOT NULL,
  portaddress1 bigint NOT NULL DEFAULT 0,
  portaddress2 bigint NOT NULL DEFAULT 0,
  portconnectionsecurity tinyint NOT NULL DEFAULT 0,
  portsslcertificateid bigint NOT NULL DEFAULT 0
);
CREATE TABLE hm_domains (
  domainid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  domainname varchar(80) NOT NULL DEFAULT '',
  domainactive tinyint NOT NULL DEFAULT 1,
  domainpostmaster varchar(80) NOT NULL DEFAULT '',
  domainmaxsize int NOT NULL DEFAULT 0,
  domainaddomain varchar(255) NOT NULL DEFAULT '',
  domainmaxmessagesize int NOT NULL DEFAULT 0,
  domainuseplusaddressing tinyint NOT NULL DEFAULT 0,
  domainplusaddressingchar varchar(1) NOT NULL DEFAULT '',
  domainantispamoptions int NOT NULL DEFAULT 0,
  domainenablesignature tinyint NOT NULL DEFAULT 0,
  domainsignaturemethod tinyint NOT NULL DEFAULT 0,
  domainsignatureplaintext text,
  domainsignaturehtml text,
  domainaddsignaturestoreplies tinyint NOT NULL DEFAULT 0,
  domainaddsignaturestolocalemail tinyint NOT NULL DEFAULT 0,
  domainmaxnoofaccounts int NOT NULL DEFAULT 0,
  domainmaxnoofaliases int NOT NULL DEFAULT 0,
  domainmaxnoofdistributionlists int NOT NULL DEFAULT 0,
  domainlimitationsenabled int NOT NULL DEFAULT 0,
  domainmaxaccountsize int NOT NULL DEFAULT 0,
  domaindkimselector varchar(255) NOT NULL DEFAULT '',
  domaindkimprivatekeyfile varchar(255) NOT NULL DEFAULT '',
  UNIQUE KEY domainname (domainname)
);
CREATE TABLE hm_domain_aliases (
  daid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  dadomainid int NOT NULL,
  daalias varchar(255) NOT NULL
);
CREATE TABLE hm_accounts (
  accountid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  accountdomainid int NOT NULL,
  accountadminlevel tinyint NOT NULL DEFAULT 0,
  accountaddress varchar(255) NOT NULL,
  accountpassword varchar(255) NOT NULL DEFAULT '',
  accountactive tinyint NOT NULL DEFAULT 1,
  accountisad tinyint NOT NULL DEFAULT 0,
  accountaddomain varchar(255) NOT NULL DEFAULT '',
  accountadusername varchar(255) NOT NULL DEFAULT '',
  accountmaxsize int NOT NULL DEFAULT 0,
  accountvacationmessageon tinyint NOT NULL DEFAULT 0,
  accountvacationmessage text,
  accountvacationsubject varchar(200) NOT NULL DEFAULT '',
  accountpwencryption tinyint NOT NULL DEFAULT 0,
  accountforwardenabled tinyint NOT NULL DEFAULT 0,
  accountforwardaddress varchar(255) NOT NULL DEFAULT '',
  accountforwardkeeporiginal tinyint NOT NULL DEFAULT 0,
  accountenablesignature tinyint NOT NULL DEFAULT 0,
  accountsignatureplaintext text,
  accountsignaturehtml text,
  accountlastlogontime datetime NULL,
  accountvacationexpires tinyint NOT NULL DEFAULT 0,
  accountvacationexpiredate datetime NULL,
  accountpersonfirstname varchar(60) NOT NULL DEFAULT '',
  accountpersonlastname varchar(60) NOT NULL DEFAULT '',
  UNIQUE KEY accountaddress (accountaddress)
);
CREATE TABLE hm_aliases (
  aliasid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  aliasdomainid int NOT NULL,
  aliasname varchar(255) NOT NULL,
  aliasvalue varchar(255) NOT NULL,
  aliasactive tinyint NOT NULL DEFAULT 1
);
CREATE TABLE hm_distributionlists (
  distributionlistid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  distributionlistdomainid int NOT NULL,
  distributionlistaddress varchar(255) NOT NULL,
  distributionlistenabled tinyint NOT NULL DEFAULT 1,
  distributionlistrequireauth tinyint NOT NULL DEFAULT 0,
  distributionlistrequireaddress varchar(255) NOT NULL DEFAULT '',
  distributionlistmode tinyint NOT NULL DEFAULT 0
);
CREATE TABLE hm_distributionlistsrecipients (
  distributionlistrecipientid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  distributionlistrecipientlistid int NOT NULL,
  distributionlistrecipientaddress varchar(255) NOT NULL
);
CREATE TABLE hm_imapfolders (
  folderid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  folderaccountid int NOT NULL,
  folderparentid int NOT NULL DEFAULT -1,
  foldername varchar(255) NOT NULL,
  folderissubscribed tinyint NOT NULL DEFAULT 1,
  foldercreationtime datetime NOT NULL,
  foldercurrentuid bigint NOT NULL DEFAULT 0
);
CREATE TABLE hm_messages (
  messageid bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
  messageaccountid int NOT NULL,
  messagefolderid int NOT NULL DEFAULT 0,
  messagefilename varchar(255) NOT NULL,
  messagetype tinyint NOT NULL,
  messagefrom varchar(255) NOT NULL DEFAULT '',
  messagesize bigint NOT NULL DEFAULT 0,
  messagecurnooftries int NOT NULL DEFAULT 0,
  messagenexttrytime datetime NULL,
  messageflags tinyint NOT NULL DEFAULT 0,
  messagecreatetime datetime NOT NULL,
  messagelocked tinyint NOT NULL DEFAULT 0,
  messageuid bigint NOT NULL DEFAULT 0
);
CREATE TABLE hm_rules (
  ruleid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  ruleaccountid int NOT NULL DEFAULT 0,
  rulename varchar(100) NOT NULL,
  ruleactive tinyint NOT NULL DEFAULT 1,
  ruleuseand tinyint NOT NULL DEFAULT 1,
  rulesortorder int NOT NULL DEFAULT 0
);
CREATE TABLE hm_securityranges (
  rangeid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  rangepriorityid int NOT NULL DEFAULT 0,
  rangelowerip1 bigint NOT NULL DEFAULT 0,
  rangeupperip1 bigint NOT NULL DEFAULT 0,
  rangeoptions int NOT NULL DEFAULT 0,
  rangename varchar(100) NOT NULL
);
CREATE TABLE hm_surblservers (
  surblid int NOT NULL AUTO_INCREMENT PRIMARY KEY,
  surblactive tinyint NOT NULL DEFAULT 1,
  surblhost varchar(255) NOT NULL,
  surblrejectmessage varchar(255) NOT NULL DEFAULT '',
  surblscore int NOT NULL DEFAULT 0
);

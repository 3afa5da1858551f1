"""Stagers for DICOM datasets (vision_language, diffusion): each image leaves de-identified.

For a record the stager writes ``images/<alias>.dcm`` under the job's data directory and returns
``{"image": "images/<alias>.dcm", "text": <report>}`` (vision_language) or
``{"image": "images/<alias>.dcm"}`` (diffusion). The staged file is a DICOM Part 10 file,
Explicit VR Little Endian, uncompressed, with the DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile applied (``BASIC_PROFILE``: Table E.1-1 of the 2023 editions, as data):

1. Every attribute of the table is handled at any depth: ``U`` UIDs are replaced, ``Z`` and
   ``Z/D`` attributes are emptied (the type 2 ones, e.g. PatientName and StudyDate, are kept,
   empty), and every other action (``X``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*`` and ``D``) removes
   the attribute: the staged file feeds a model, not a PACS, so no dummy values are needed.
   Curve (50xx) and overlay (60xx) groups and private attributes are removed.
2. Stricter than the profile, so that nothing it does not list can carry an identifier: every
   other UID that is not a registered DICOM UID (SOP classes, transfer syntaxes) is replaced,
   every person name, date, time and date-time is removed, every free-text value (LT, ST, UT)
   and every binary value other than the pixel data (OB, OW, UN...) is removed.
3. Replacement UIDs are ``2.25.<HMAC-SHA256 of the original>`` under a key derived from the
   job's data directory and a secret the worker process draws at start and never writes down:
   consistent within one job (instances of a series still share a series), different for every
   job, and unlinkable to the originals.
4. The pixel data is decoded and written again uncompressed (YBR becomes RGB, PALETTE COLOR is
   expanded to RGB), so the runtime needs no codec; the tags a model needs are kept: Rows,
   Columns, BitsAllocated, BitsStored, HighBit, PixelRepresentation, SamplesPerPixel,
   PhotometricInterpretation, NumberOfFrames, PixelSpacing, RescaleSlope/Intercept,
   WindowCenter/Width, Modality, BodyPartExamined (and other non-identifying technique tags).
5. PatientIdentityRemoved is YES, DeidentificationMethod names this profile, the method code
   sequence holds DCM 113100, LongitudinalTemporalInformationModified is REMOVED; a fresh file
   meta header and an all-zero preamble replace the original ones.

Images whose BurnedInAnnotation is YES are declined (counted, never staged) unless the setting
``IMAGING_EXCLUDE_BURNED_IN`` (env ``RAPHA_IMAGING_EXCLUDE_BURNED_IN``) is false; images without
the attribute are staged. The report text is the record's text with the patient's identifiers
redacted (as for notes) and, in addition, the study's own accession number, study ID and UIDs
read from the original file replaced by ``[ACCESSION]`` and ``[UID]``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from django.conf import settings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, set_pixel_data
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID_dictionary, ExplicitVRLittleEndian

from training.staging import StageItem, register_stager

DEIDENTIFICATION_METHOD = "DICOM PS3.15 Annex E Basic Profile (Rapha staging 1)"  # LO: at most 64
MODEL_TAGS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "Modality",
    "BodyPartExamined",
)
REMOVED_VRS = frozenset({"PN", "DA", "DT", "TM", "LT", "ST", "UT", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
KEPT_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
              "ReferringPhysicianName", "StudyID", "AccessionNumber")

# DICOM PS3.15 Table E.1-1, Basic Profile column: (group,element) keyword action. The repeating
# groups Curve Data (50xx,xxxx), Overlay Data (60xx,3000) and Overlay Comments (60xx,4000) (all X)
# and private attributes (X) are in REMOVED_GROUPS and handled as a rule.
BASIC_PROFILE_TABLE = """
(0000,1000) AffectedSOPInstanceUID X
(0000,1001) RequestedSOPInstanceUID U
(0002,0003) MediaStorageSOPInstanceUID U
(0004,1511) ReferencedSOPInstanceUIDInFile U
(0008,0012) InstanceCreationDate X/D
(0008,0013) InstanceCreationTime X/Z/D
(0008,0014) InstanceCreatorUID U
(0008,0015) InstanceCoercionDateTime X
(0008,0017) AcquisitionUID U
(0008,0018) SOPInstanceUID U
(0008,0019) PyramidUID U
(0008,0020) StudyDate Z
(0008,0021) SeriesDate X/D
(0008,0022) AcquisitionDate X/Z
(0008,0023) ContentDate Z/D
(0008,0024) OverlayDate X
(0008,0025) CurveDate X
(0008,002A) AcquisitionDateTime X/Z/D
(0008,0030) StudyTime Z
(0008,0031) SeriesTime X/D
(0008,0032) AcquisitionTime X/Z
(0008,0033) ContentTime Z/D
(0008,0034) OverlayTime X
(0008,0035) CurveTime X
(0008,0050) AccessionNumber Z
(0008,0054) RetrieveAETitle X
(0008,0055) StationAETitle X
(0008,0058) FailedSOPInstanceUIDList U
(0008,0080) InstitutionName X/Z/D
(0008,0081) InstitutionAddress X
(0008,0082) InstitutionCodeSequence X/Z/D
(0008,0090) ReferringPhysicianName Z
(0008,0092) ReferringPhysicianAddress X
(0008,0094) ReferringPhysicianTelephoneNumbers X
(0008,0096) ReferringPhysicianIdentificationSequence X
(0008,009C) ConsultingPhysicianName Z
(0008,009D) ConsultingPhysicianIdentificationSequence X
(0008,0106) ContextGroupVersion D
(0008,0107) ContextGroupLocalVersion D
(0008,0201) TimezoneOffsetFromUTC X
(0008,1000) NetworkID X
(0008,1010) StationName X/Z/D
(0008,1030) StudyDescription X
(0008,103E) SeriesDescription X
(0008,1040) InstitutionalDepartmentName X
(0008,1041) InstitutionalDepartmentTypeCodeSequence X
(0008,1048) PhysiciansOfRecord X
(0008,1049) PhysiciansOfRecordIdentificationSequence X
(0008,1050) PerformingPhysicianName X
(0008,1052) PerformingPhysicianIdentificationSequence X
(0008,1060) NameOfPhysiciansReadingStudy X
(0008,1062) PhysiciansReadingStudyIdentificationSequence X
(0008,1070) OperatorsName X/Z/D
(0008,1072) OperatorIdentificationSequence X/D
(0008,1080) AdmittingDiagnosesDescription X
(0008,1084) AdmittingDiagnosesCodeSequence X
(0008,1088) PyramidDescription X
(0008,1110) ReferencedStudySequence X/Z
(0008,1111) ReferencedPerformedProcedureStepSequence X/Z/D
(0008,1120) ReferencedPatientSequence X
(0008,1140) ReferencedImageSequence X/Z/U*
(0008,1155) ReferencedSOPInstanceUID U
(0008,1195) TransactionUID U
(0008,2111) DerivationDescription X
(0008,2112) SourceImageSequence X/Z/U*
(0008,3010) IrradiationEventUID U
(0008,4000) IdentifyingComments X
(0010,0010) PatientName Z
(0010,0020) PatientID Z
(0010,0021) IssuerOfPatientID X
(0010,0030) PatientBirthDate Z
(0010,0032) PatientBirthTime X
(0010,0040) PatientSex Z
(0010,0050) PatientInsurancePlanCodeSequence X
(0010,0101) PatientPrimaryLanguageCodeSequence X
(0010,0102) PatientPrimaryLanguageModifierCodeSequence X
(0010,1000) OtherPatientIDs X
(0010,1001) OtherPatientNames X
(0010,1002) OtherPatientIDsSequence X
(0010,1005) PatientBirthName X
(0010,1010) PatientAge X
(0010,1020) PatientSize X
(0010,1030) PatientWeight X
(0010,1040) PatientAddress X
(0010,1050) InsurancePlanIdentification X
(0010,1060) PatientMotherBirthName X
(0010,1080) MilitaryRank X
(0010,1081) BranchOfService X
(0010,1090) MedicalRecordLocator X
(0010,1100) ReferencedPatientPhotoSequence X
(0010,2000) MedicalAlerts X
(0010,2110) Allergies X
(0010,2150) CountryOfResidence X
(0010,2152) RegionOfResidence X
(0010,2154) PatientTelephoneNumbers X
(0010,2155) PatientTelecomInformation X
(0010,2160) EthnicGroup X
(0010,2180) Occupation X
(0010,21A0) SmokingStatus X
(0010,21B0) AdditionalPatientHistory X
(0010,21C0) PregnancyStatus X
(0010,21D0) LastMenstrualDate X
(0010,21F0) PatientReligiousPreference X
(0010,2203) PatientSexNeutered X/Z
(0010,2297) ResponsiblePerson X
(0010,2299) ResponsibleOrganization X
(0010,4000) PatientComments X
(0012,0010) ClinicalTrialSponsorName D
(0012,0020) ClinicalTrialProtocolID D
(0012,0021) ClinicalTrialProtocolName Z
(0012,0030) ClinicalTrialSiteID Z
(0012,0031) ClinicalTrialSiteName Z
(0012,0040) ClinicalTrialSubjectID D
(0012,0042) ClinicalTrialSubjectReadingID D
(0012,0050) ClinicalTrialTimePointID Z
(0012,0051) ClinicalTrialTimePointDescription X
(0012,0060) ClinicalTrialCoordinatingCenterName Z
(0012,0071) ClinicalTrialSeriesID X
(0012,0072) ClinicalTrialSeriesDescription X
(0012,0081) ClinicalTrialProtocolEthicsCommitteeName D
(0012,0082) ClinicalTrialProtocolEthicsCommitteeApprovalNumber X
(0012,0086) EthicsCommitteeApprovalEffectivenessStartDate X
(0012,0087) EthicsCommitteeApprovalEffectivenessEndDate X
(0014,407C) CalibrationTime X
(0014,407E) CalibrationDate X
(0016,002B) MakerNote X
(0016,004B) DeviceSettingDescription X
(0016,004D) CameraOwnerName X
(0016,004E) LensSpecification X
(0016,004F) LensMake X
(0016,0050) LensModel X
(0016,0051) LensSerialNumber X
(0016,0070) GPSVersionID X
(0016,0071) GPSLatitudeRef X
(0016,0072) GPSLatitude X
(0016,0073) GPSLongitudeRef X
(0016,0074) GPSLongitude X
(0016,0075) GPSAltitudeRef X
(0016,0076) GPSAltitude X
(0016,0077) GPSTimeStamp X
(0016,0078) GPSSatellites X
(0016,0079) GPSStatus X
(0016,007A) GPSMeasureMode X
(0016,007B) GPSDOP X
(0016,007C) GPSSpeedRef X
(0016,007D) GPSSpeed X
(0016,007E) GPSTrackRef X
(0016,007F) GPSTrack X
(0016,0080) GPSImgDirectionRef X
(0016,0081) GPSImgDirection X
(0016,0082) GPSMapDatum X
(0016,0083) GPSDestLatitudeRef X
(0016,0084) GPSDestLatitude X
(0016,0085) GPSDestLongitudeRef X
(0016,0086) GPSDestLongitude X
(0016,0087) GPSDestBearingRef X
(0016,0088) GPSDestBearing X
(0016,0089) GPSDestDistanceRef X
(0016,008A) GPSDestDistance X
(0016,008B) GPSProcessingMethod X
(0016,008C) GPSAreaInformation X
(0016,008D) GPSDateStamp X
(0016,008E) GPSDifferential X
(0018,0010) ContrastBolusAgent Z/D
(0018,0027) InterventionDrugStopTime X
(0018,0035) InterventionDrugStartTime X
(0018,1000) DeviceSerialNumber X/Z/D
(0018,1002) DeviceUID U
(0018,1004) PlateID X
(0018,1005) GeneratorID X
(0018,1007) CassetteID X
(0018,1008) GantryID X
(0018,1009) UniqueDeviceIdentifier X
(0018,100A) UDISequence X
(0018,100B) ManufacturerDeviceClassUID U
(0018,1012) DateOfSecondaryCapture X
(0018,1014) TimeOfSecondaryCapture X
(0018,1030) ProtocolName X/D
(0018,1042) ContrastBolusStartTime X
(0018,1043) ContrastBolusStopTime X
(0018,1072) RadiopharmaceuticalStartTime X
(0018,1073) RadiopharmaceuticalStopTime X
(0018,1078) RadiopharmaceuticalStartDateTime X
(0018,1079) RadiopharmaceuticalStopDateTime X
(0018,11BB) AcquisitionFieldOfViewLabel D
(0018,1200) DateOfLastCalibration X
(0018,1201) TimeOfLastCalibration X
(0018,1202) DateTimeOfLastCalibration X
(0018,1203) CalibrationDateTime Z
(0018,1204) DateOfManufacture X
(0018,1205) DateOfInstallation X
(0018,1400) AcquisitionDeviceProcessingDescription X/D
(0018,2042) TargetUID U
(0018,4000) AcquisitionComments X
(0018,5011) TransducerIdentificationSequence X
(0018,700A) DetectorID X/D
(0018,700C) DateOfLastDetectorCalibration X/D
(0018,700E) TimeOfLastDetectorCalibration X/D
(0018,9074) FrameAcquisitionDateTime D
(0018,9151) FrameReferenceDateTime D
(0018,9185) RespiratoryMotionCompensationTechniqueDescription X
(0018,9367) XRaySourceID D
(0018,9369) SourceStartDateTime D
(0018,936A) SourceEndDateTime D
(0018,9371) XRayDetectorID D
(0018,9373) XRayDetectorLabel X
(0018,937B) MultienergyAcquisitionDescription X
(0018,937F) DecompositionDescription X
(0018,9424) AcquisitionProtocolDescription X
(0018,9516) StartAcquisitionDateTime X/D
(0018,9517) EndAcquisitionDateTime X/D
(0018,9623) FunctionalSyncPulse D
(0018,9701) DecayCorrectionDateTime D
(0018,9804) ExclusionStartDateTime D
(0018,9919) InstructionPerformedDateTime Z/D
(0018,9937) RequestedSeriesDescription X
(0018,A002) ContributionDateTime X
(0018,A003) ContributionDescription X
(0020,000D) StudyInstanceUID U
(0020,000E) SeriesInstanceUID U
(0020,0010) StudyID Z
(0020,0027) PyramidLabel X
(0020,0052) FrameOfReferenceUID U
(0020,0200) SynchronizationFrameOfReferenceUID U
(0020,3401) ModifyingDeviceID X
(0020,3403) ModifiedImageDate X
(0020,3405) ModifiedImageTime X
(0020,3406) ModifiedImageDescription X
(0020,4000) ImageComments X
(0020,9158) FrameComments X
(0020,9161) ConcatenationUID U
(0020,9164) DimensionOrganizationUID U
(0028,1199) PaletteColorLookupTableUID U
(0028,1214) LargePaletteColorLookupTableUID U
(0028,4000) ImagePresentationComments X
(0032,0012) StudyIDIssuer X
(0032,0032) StudyVerifiedDate X
(0032,0033) StudyVerifiedTime X
(0032,0034) StudyReadDate X
(0032,0035) StudyReadTime X
(0032,1000) ScheduledStudyStartDate X
(0032,1001) ScheduledStudyStartTime X
(0032,1010) ScheduledStudyStopDate X
(0032,1011) ScheduledStudyStopTime X
(0032,1020) ScheduledStudyLocation X
(0032,1021) ScheduledStudyLocationAETitle X
(0032,1030) ReasonForStudy X
(0032,1032) RequestingPhysician X
(0032,1033) RequestingService X
(0032,1040) StudyArrivalDate X
(0032,1041) StudyArrivalTime X
(0032,1050) StudyCompletionDate X
(0032,1051) StudyCompletionTime X
(0032,1060) RequestedProcedureDescription X/Z
(0032,1066) ReasonForVisit X
(0032,1067) ReasonForVisitCodeSequence X
(0032,1070) RequestedContrastAgent X
(0032,4000) StudyComments X
(0034,0001) FlowIdentifierSequence D
(0034,0002) FlowIdentifier D
(0034,0005) SourceIdentifier D
(0034,0007) FrameOriginTimestamp D
(0038,0004) ReferencedPatientAliasSequence X
(0038,0010) AdmissionID X
(0038,0011) IssuerOfAdmissionID X
(0038,0014) IssuerOfAdmissionIDSequence X
(0038,001A) ScheduledAdmissionDate X
(0038,001B) ScheduledAdmissionTime X
(0038,001C) ScheduledDischargeDate X
(0038,001D) ScheduledDischargeTime X
(0038,001E) ScheduledPatientInstitutionResidence X
(0038,0020) AdmittingDate X
(0038,0021) AdmittingTime X
(0038,0030) DischargeDate X
(0038,0032) DischargeTime X
(0038,0040) DischargeDiagnosisDescription X
(0038,0050) SpecialNeeds X
(0038,0060) ServiceEpisodeID X
(0038,0061) IssuerOfServiceEpisodeID X
(0038,0062) ServiceEpisodeDescription X
(0038,0064) IssuerOfServiceEpisodeIDSequence X
(0038,0300) CurrentPatientLocation X
(0038,0400) PatientInstitutionResidence X
(0038,0500) PatientState X
(0038,4000) VisitComments X
(003A,0310) MultiplexGroupUID U
(003A,0314) ImpedanceMeasurementDateTime D
(003A,0329) WaveformFilterDescription X
(003A,032B) FilterLookupTableDescription X
(0040,0001) ScheduledStationAETitle X
(0040,0002) ScheduledProcedureStepStartDate X
(0040,0003) ScheduledProcedureStepStartTime X
(0040,0004) ScheduledProcedureStepEndDate X
(0040,0005) ScheduledProcedureStepEndTime X
(0040,0006) ScheduledPerformingPhysicianName X
(0040,0007) ScheduledProcedureStepDescription X
(0040,0009) ScheduledProcedureStepID X
(0040,000B) ScheduledPerformingPhysicianIdentificationSequence X
(0040,0010) ScheduledStationName X
(0040,0011) ScheduledProcedureStepLocation X
(0040,0012) PreMedication X
(0040,0241) PerformedStationAETitle X
(0040,0242) PerformedStationName X
(0040,0243) PerformedLocation X
(0040,0244) PerformedProcedureStepStartDate X
(0040,0245) PerformedProcedureStepStartTime X
(0040,0250) PerformedProcedureStepEndDate X
(0040,0251) PerformedProcedureStepEndTime X
(0040,0253) PerformedProcedureStepID X
(0040,0254) PerformedProcedureStepDescription X
(0040,0275) RequestAttributesSequence X
(0040,0280) CommentsOnThePerformedProcedureStep X
(0040,0310) CommentsOnRadiationDose X
(0040,050A) SpecimenAccessionNumber X
(0040,0512) ContainerIdentifier D
(0040,0513) IssuerOfTheContainerIdentifierSequence Z
(0040,051A) ContainerDescription X
(0040,0551) SpecimenIdentifier D
(0040,0554) SpecimenUID U
(0040,0555) AcquisitionContextSequence X/Z
(0040,0562) IssuerOfTheSpecimenIdentifierSequence Z
(0040,0600) SpecimenShortDescription X
(0040,0602) SpecimenDetailedDescription X
(0040,0610) SpecimenPreparationSequence Z
(0040,06FA) SlideIdentifier X
(0040,1001) RequestedProcedureID X
(0040,1002) ReasonForTheRequestedProcedure X
(0040,1004) PatientTransportArrangements X
(0040,1005) RequestedProcedureLocation X
(0040,100A) ReasonForRequestedProcedureCodeSequence X
(0040,1010) NamesOfIntendedRecipientsOfResults X
(0040,1011) IntendedRecipientsOfResultsIdentificationSequence X
(0040,1101) PersonIdentificationCodeSequence D
(0040,1102) PersonAddress X
(0040,1103) PersonTelephoneNumbers X
(0040,1104) PersonTelecomInformation X
(0040,1400) RequestedProcedureComments X
(0040,2001) ReasonForTheImagingServiceRequest X
(0040,2004) IssueDateOfImagingServiceRequest X
(0040,2005) IssueTimeOfImagingServiceRequest X
(0040,2008) OrderEnteredBy X
(0040,2009) OrderEntererLocation X
(0040,2010) OrderCallbackPhoneNumber X
(0040,2011) OrderCallbackTelecomInformation X
(0040,2016) PlacerOrderNumberImagingServiceRequest Z
(0040,2017) FillerOrderNumberImagingServiceRequest Z
(0040,2400) ImagingServiceRequestComments X
(0040,3001) ConfidentialityConstraintOnPatientDataDescription X
(0040,4005) ScheduledProcedureStepStartDateTime X
(0040,4008) ScheduledProcedureStepExpirationDateTime X
(0040,4010) ScheduledProcedureStepModificationDateTime X
(0040,4011) ExpectedCompletionDateTime X
(0040,4023) ReferencedGeneralPurposeScheduledProcedureStepTransactionUID U
(0040,4025) ScheduledStationNameCodeSequence X
(0040,4027) ScheduledStationGeographicLocationCodeSequence X
(0040,4028) PerformedStationNameCodeSequence X
(0040,4030) PerformedStationGeographicLocationCodeSequence X
(0040,4034) ScheduledHumanPerformersSequence X
(0040,4035) ActualHumanPerformersSequence X
(0040,4036) HumanPerformerOrganization X
(0040,4037) HumanPerformerName X
(0040,4050) PerformedProcedureStepStartDateTime X
(0040,4051) PerformedProcedureStepEndDateTime X
(0040,4052) ProcedureStepCancellationDateTime X
(0040,A023) FindingsGroupRecordingDateTrial X
(0040,A024) FindingsGroupRecordingTimeTrial X
(0040,A027) VerifyingOrganization D
(0040,A030) VerificationDateTime D
(0040,A032) ObservationDateTime X/D
(0040,A033) ObservationStartDateTime X
(0040,A073) VerifyingObserverSequence D
(0040,A075) VerifyingObserverName D
(0040,A078) AuthorObserverSequence X
(0040,A07A) ParticipantSequence X
(0040,A07C) CustodialOrganizationSequence X
(0040,A082) ParticipationDateTime Z
(0040,A088) VerifyingObserverIdentificationCodeSequence Z
(0040,A110) DateOfDocumentOrVerbalTransactionTrial X
(0040,A112) TimeOfDocumentCreationOrVerbalTransactionTrial X
(0040,A120) DateTime D
(0040,A121) Date D
(0040,A122) Time D
(0040,A123) PersonName D
(0040,A124) UID U
(0040,A13A) ReferencedDateTime D
(0040,A171) ObservationUID U
(0040,A172) ReferencedObservationUIDTrial U
(0040,A192) ObservationDateTrial X
(0040,A193) ObservationTimeTrial X
(0040,A307) CurrentObserverTrial X
(0040,A352) VerbalSourceTrial X
(0040,A353) AddressTrial X
(0040,A354) TelephoneNumberTrial X
(0040,A358) VerbalSourceIdentifierCodeSequenceTrial X
(0040,A402) ObservationSubjectUIDTrial U
(0040,A730) ContentSequence D
(0040,DB06) TemplateVersion X
(0040,DB07) TemplateLocalVersion X
(0040,DB0C) TemplateExtensionOrganizationUID U
(0040,DB0D) TemplateExtensionCreatorUID U
(0040,E004) HL7DocumentEffectiveTime X
(0042,0011) EncapsulatedDocument D
(0044,0004) ApprovalStatusDateTime X
(0044,000B) ProductExpirationDateTime X
(0044,0010) SubstanceAdministrationDateTime X
(0044,0104) AssertionDateTime D
(0044,0105) AssertionExpirationDateTime X
(0050,001B) ContainerComponentID X
(0050,0020) DeviceDescription X
(0050,0021) LongDeviceDescription X
(0062,0021) TrackingUID U
(0064,0003) SourceFrameOfReferenceUID U
(0068,6226) EffectiveDateTime D
(0068,6270) InformationIssueDateTime D
(006A,0003) AnnotationGroupUID D
(006A,0005) AnnotationGroupLabel D
(006A,0006) AnnotationGroupDescription X
(0070,0001) GraphicAnnotationSequence D
(0070,0082) PresentationCreationDate X
(0070,0083) PresentationCreationTime X
(0070,0084) ContentCreatorName Z/D
(0070,0086) ContentCreatorIdentificationCodeSequence X
(0070,031A) FiducialUID U
(0070,1101) PresentationDisplayCollectionUID U
(0070,1102) PresentationSequenceCollectionUID U
(0072,000A) HangingProtocolCreationDateTime D
(0072,005E) SelectorAEValue D
(0072,005F) SelectorASValue D
(0072,0061) SelectorDAValue D
(0072,0063) SelectorDTValue D
(0072,0065) SelectorOBValue D
(0072,0066) SelectorLOValue D
(0072,0068) SelectorLTValue D
(0072,006A) SelectorPNValue D
(0072,006B) SelectorTMValue D
(0072,006C) SelectorSHValue D
(0072,006D) SelectorUNValue D
(0072,006E) SelectorSTValue D
(0072,0070) SelectorUTValue D
(0072,0071) SelectorURValue D
(0074,1234) ReceivingAE X
(0074,1236) RequestingAE X
(0088,0140) StorageMediaFileSetUID U
(0088,0200) IconImageSequence X
(0088,0904) TopicTitle X
(0088,0906) TopicSubject X
(0088,0910) TopicAuthor X
(0088,0912) TopicKeywords X
(0100,0420) SOPAuthorizationDateTime X
(0400,0100) DigitalSignatureUID U
(0400,0105) DigitalSignatureDateTime D
(0400,0115) CertificateOfSigner D
(0400,0310) CertifiedTimestamp X
(0400,0402) ReferencedDigitalSignatureSequence X
(0400,0403) ReferencedSOPInstanceMACSequence X
(0400,0404) MAC X
(0400,0550) ModifiedAttributesSequence X
(0400,0551) NonconformingModifiedAttributesSequence X
(0400,0552) NonconformingDataElementValue X
(0400,0561) OriginalAttributesSequence X
(0400,0562) AttributeModificationDateTime D
(0400,0563) ModifyingSystem D
(0400,0564) SourceOfPreviousValues Z
(0400,0565) ReasonForTheAttributeModification D
(0400,0600) InstanceOriginStatus X
(2030,0020) TextString X
(2100,0040) CreationDate X
(2100,0050) CreationTime X
(2100,0070) Originator X
(2100,0140) DestinationAE D
(2200,0002) LabelText X/Z
(2200,0005) BarcodeValue X/Z
(3002,0121) PositionAcquisitionTemplateName X
(3002,0123) PositionAcquisitionTemplateDescription X
(3006,0002) StructureSetLabel D
(3006,0004) StructureSetName X
(3006,0006) StructureSetDescription X
(3006,0008) StructureSetDate Z
(3006,0009) StructureSetTime Z
(3006,0024) ReferencedFrameOfReferenceUID U
(3006,0026) ROIName Z
(3006,0028) ROIDescription X
(3006,0038) ROIGenerationDescription X
(3006,0085) ROIObservationLabel X
(3006,0088) ROIObservationDescription X
(3006,00A6) ROIInterpreter Z
(3006,00C2) RelatedFrameOfReferenceUID U
(3008,0024) TreatmentControlPointDate D
(3008,0025) TreatmentControlPointTime D
(3008,0054) FirstTreatmentDate X/D
(3008,0056) MostRecentTreatmentDate X/D
(3008,0105) SourceSerialNumber X/Z
(3008,0162) SafePositionExitDate D
(3008,0164) SafePositionExitTime D
(3008,0166) SafePositionReturnDate D
(3008,0168) SafePositionReturnTime D
(3008,0250) TreatmentDate X/D
(3008,0251) TreatmentTime X/D
(300A,0002) RTPlanLabel D
(300A,0003) RTPlanName X
(300A,0004) RTPlanDescription X
(300A,0006) RTPlanDate X/D
(300A,0007) RTPlanTime X/D
(300A,000B) TreatmentSites X
(300A,000E) PrescriptionDescription X
(300A,0013) DoseReferenceUID U
(300A,0016) DoseReferenceDescription X
(300A,0072) FractionGroupDescription X
(300A,0083) ReferencedDoseReferenceUID U
(300A,00B2) TreatmentMachineName X/Z
(300A,00C3) BeamDescription X
(300A,00DD) BolusDescription X
(300A,0196) FixationDeviceDescription X
(300A,01A6) ShieldingDeviceDescription X
(300A,01B2) SetupTechniqueDescription X
(300A,0216) SourceManufacturer X
(300A,022C) SourceStrengthReferenceDate D
(300A,022E) SourceStrengthReferenceTime D
(300A,02EB) CompensatorDescription X
(300A,0608) TreatmentPositionGroupLabel D
(300A,0609) TreatmentPositionGroupUID U
(300A,0611) RTAccessoryHolderSlotID Z
(300A,0615) RTAccessoryDeviceSlotID Z
(300A,0619) RadiationDoseIdentificationLabel D
(300A,0623) RadiationDoseInVivoMeasurementLabel D
(300A,062A) RTToleranceSetLabel D
(300A,0650) PatientSetupUID U
(300A,0676) EquipmentFrameOfReferenceDescription X
(300A,067C) RadiationGenerationModeLabel D
(300A,067D) RadiationGenerationModeDescription Z
(300A,0700) TreatmentSessionUID U
(300A,0734) TreatmentToleranceViolationDescription D
(300A,0736) TreatmentToleranceViolationDateTime D
(300A,073A) RecordedRTControlPointDateTime D
(300A,0741) InterlockDateTime D
(300A,0742) InterlockDescription D
(300A,0760) OverrideDateTime D
(300A,0783) InterlockOriginDescription D
(300A,0785) ReferencedTreatmentPositionGroupUID U
(300A,078E) PatientTreatmentPreparationProcedureParameterDescription X
(300A,0792) PatientTreatmentPreparationMethodDescription X
(300A,0794) PatientSetupPhotoDescription X
(300A,079A) DisplacementReferenceLabel X
(300C,0113) ReasonForOmissionDescription X
(300C,0127) BeamHoldTransitionDateTime D
(300E,0004) ReviewDate Z
(300E,0005) ReviewTime Z
(300E,0008) ReviewerName X/Z
(3010,0006) ConceptualVolumeUID U
(3010,000B) ReferencedConceptualVolumeUID U
(3010,000F) ConceptualVolumeCombinationDescription Z
(3010,0013) ConstituentConceptualVolumeUID U
(3010,0015) SourceConceptualVolumeUID U
(3010,0017) ConceptualVolumeDescription Z
(3010,001B) DeviceAlternateIdentifier Z
(3010,002D) DeviceLabel D
(3010,0031) ReferencedFiducialsUID U
(3010,0033) UserContentLabel D
(3010,0034) UserContentLongLabel D
(3010,0035) EntityLabel D
(3010,0036) EntityName X
(3010,0037) EntityDescription X
(3010,0038) EntityLongLabel D
(3010,003B) RTTreatmentPhaseUID U
(3010,0043) ManufacturerDeviceIdentifier Z
(3010,004C) IntendedPhaseStartDate X/D
(3010,004D) IntendedPhaseEndDate X/D
(3010,0054) RTPrescriptionLabel D
(3010,0056) RTTreatmentApproachLabel X/D
(3010,005A) RTPhysicianIntentNarrative Z
(3010,005C) ReasonForSuperseding Z
(3010,0061) PriorTreatmentDoseDescription X
(3010,006E) DosimetricObjectiveUID U
(3010,006F) ReferencedDosimetricObjectiveUID U
(3010,0077) TreatmentSite X/D
(3010,007A) TreatmentTechniqueNotes Z
(3010,007B) PrescriptionNotes Z
(3010,007F) FractionationNotes Z
(3010,0081) PrescriptionNotesSequence Z
(3010,0085) IntendedFractionStartTime X
(4000,0010) Arbitrary X
(4000,4000) TextComments X
(4008,0040) ResultsID X
(4008,0042) ResultsIDIssuer X
(4008,0100) InterpretationRecordedDate X
(4008,0101) InterpretationRecordedTime X
(4008,0102) InterpretationRecorder X
(4008,0108) InterpretationTranscriptionDate X
(4008,0109) InterpretationTranscriptionTime X
(4008,010A) InterpretationTranscriber X
(4008,010B) InterpretationText X
(4008,010C) InterpretationAuthor X
(4008,0111) InterpretationApproverSequence X
(4008,0112) InterpretationApprovalDate X
(4008,0113) InterpretationApprovalTime X
(4008,0114) PhysicianApprovingInterpretation X
(4008,0115) InterpretationDiagnosisDescription X
(4008,0118) ResultsDistributionListSequence X
(4008,0119) DistributionName X
(4008,011A) DistributionAddress X
(4008,0200) InterpretationID X
(4008,0202) InterpretationIDIssuer X
(4008,0300) Impressions X
(4008,4000) ResultsComments X
(FFFA,FFFA) DigitalSignaturesSequence X
(FFFC,FFFC) DataSetTrailingPadding X
"""
REMOVED_GROUPS = ((0x5000, 0xFF00), (0x6000, 0xFF00))  # (group, mask): curves, overlays


@dataclass(frozen=True)
class ProfileEntry:
    tag: BaseTag
    keyword: str
    action: str  # as in Table E.1-1: D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*

    @property
    def staged(self) -> str:
        """What staging does: "replace" (U), "empty" (Z, Z/D) or "remove" (everything else)."""
        if self.action == "U":
            return "replace"
        if self.action in ("Z", "Z/D"):
            return "empty"
        return "remove"


def _parse_profile(table: str) -> tuple[ProfileEntry, ...]:
    entries = []
    for line in table.strip().splitlines():
        tag, keyword, action = line.split()
        group, element = tag.strip("()").split(",")
        entries.append(ProfileEntry(Tag(int(group, 16), int(element, 16)), keyword, action))
    return tuple(entries)


BASIC_PROFILE: tuple[ProfileEntry, ...] = _parse_profile(BASIC_PROFILE_TABLE)
_BY_TAG = {entry.tag: entry for entry in BASIC_PROFILE}


# Per-job UIDs ------------------------------------------------------------------------------------

_PROCESS_SECRET = secrets.token_bytes(32)  # drawn when the worker starts; never written anywhere


def job_secret(data_dir: Path) -> bytes:
    """The secret behind one job's replacement UIDs: one per data directory (one per job), never stored.

    Every record of a staging run gets the same one, so instances of one series still share a
    series UID; another job (another folder) gets another, so its UIDs cannot be linked to these.
    """
    return hmac.new(_PROCESS_SECRET, str(data_dir.resolve()).encode("utf-8"), hashlib.sha256).digest()


def replacement_uid(secret: bytes, original: str) -> str:
    digest = hmac.new(secret, original.encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


# De-identification -------------------------------------------------------------------------------

def _registered(uid: str) -> bool:
    return uid in UID_dictionary


def _removed_group(tag: BaseTag) -> bool:
    return any(tag.group & mask == group for group, mask in REMOVED_GROUPS)


def _clean(source: Dataset, secret: bytes) -> Dataset:
    """A new dataset holding what may stay of ``source`` (recursively), pixel data excluded."""
    out = Dataset()
    for elem in source:  # converts raw elements; sequences are Datasets all the way down
        tag = elem.tag
        if tag.is_private or tag.group in (0x0000, 0x0002) or tag.element == 0x0000 or _removed_group(tag):
            continue
        if tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):  # pixel data is written afresh
            continue
        entry = _BY_TAG.get(tag)
        action = entry.staged if entry is not None else None
        if action == "remove":
            continue
        if action == "empty":
            out.add(DataElement(tag, elem.VR, None if elem.VR != "SQ" else Sequence()))
            continue
        if elem.VR == "UI":
            if elem.value in (None, ""):
                out.add(DataElement(tag, "UI", elem.value))
                continue
            values = elem.value if elem.VM > 1 else [elem.value]
            new = [str(v) if _registered(str(v)) and action != "replace" else replacement_uid(secret, str(v))
                   for v in values]
            out.add(DataElement(tag, "UI", new if elem.VM > 1 else new[0]))
            continue
        if elem.VR == "SQ":
            out.add(DataElement(tag, "SQ", Sequence([_clean(item, secret) for item in elem.value])))
            continue
        if elem.VR in REMOVED_VRS:
            continue
        out.add(DataElement(tag, elem.VR, elem.value))
    return out


def deidentify(source: Dataset, secret: bytes) -> Dataset:
    """The de-identified copy of one image (see the module docstring); ``source`` is not changed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = source.pixel_array  # YBR_FULL(_422) comes out as RGB
        photometric = str(source.get("PhotometricInterpretation", "MONOCHROME2"))
        bits_stored = int(source.get("BitsStored") or pixels.dtype.itemsize * 8)
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, source)
            photometric, bits_stored = "RGB", pixels.dtype.itemsize * 8
        elif photometric.startswith("YBR_FULL"):
            photometric = "RGB"
    if pixels.dtype.kind == "b" or pixels.dtype.itemsize == 1 and bits_stored == 1:
        pixels = pixels.astype(np.uint8)
    pixels = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<")))
    out = _clean(source, secret)
    for keyword in KEPT_EMPTY:
        if keyword not in out:
            setattr(out, keyword, "")
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    set_pixel_data(out, pixels, photometric, _bits_stored(pixels, bits_stored), generate_instance_uid=False)
    for keyword in ("LUTDescriptor", "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
                    "BluePaletteColorLookupTableDescriptor"):
        if photometric == "RGB" and keyword in out:
            del out[keyword]
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = Sequence([code])
    out.LongitudinalTemporalInformationModified = "REMOVED"
    if "SOPInstanceUID" not in out:
        out.SOPInstanceUID = replacement_uid(secret, f"missing-sop-instance:{id(source)}")
    meta = out.file_meta
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID", source.file_meta.get("MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return out


def _bits_stored(pixels: np.ndarray, declared: int) -> int:
    """The declared BitsStored when every value fits in it (files in the wild break it), else the full width."""
    width = pixels.dtype.itemsize * 8
    bits = min(max(declared, 1), width)
    low, high = int(pixels.min()), int(pixels.max())
    if pixels.dtype.kind == "u":
        fits = high <= 2 ** bits - 1
    else:
        fits = -(2 ** (bits - 1)) <= low and high <= 2 ** (bits - 1) - 1
    return bits if fits else width


def _text_redactor(source: Dataset):
    """Replaces this study's accession number, study ID and UIDs (read from the original) in a text."""
    replacements: dict[str, str] = {}
    for keyword, placeholder in (("AccessionNumber", "[ACCESSION]"), ("StudyID", "[ACCESSION]"),
                                 ("StudyInstanceUID", "[UID]"), ("SeriesInstanceUID", "[UID]"),
                                 ("SOPInstanceUID", "[UID]")):
        value = str(source.get(keyword, "") or "").strip()
        if len(value) >= 4:  # a study ID of "1" is no identifier, and would eat every "1"
            replacements.setdefault(value.lower(), placeholder)
    if not replacements:
        return lambda text: text
    forms = sorted(replacements, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.])(?:" + "|".join(map(re.escape, forms)) + r")(?!\w|\.\w)", re.IGNORECASE)
    return lambda text: pattern.sub(lambda m: replacements[m.group(0).lower()], text)


# Stagers -----------------------------------------------------------------------------------------

def _original(item: StageItem) -> tuple[Dataset, bytes]:
    attributes = item.record.attributes or {}
    relative = attributes.get("attachment_path")
    if not relative:
        raise ValueError(f"record {item.record.source_id}: no DICOM attachment")
    data = item.source(relative).read_bytes()
    if hashlib.sha256(data).hexdigest() != attributes.get("attachment_sha256"):
        raise ValueError(f"record {item.record.source_id}: its DICOM file changed since import (sha256 mismatch)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data)), data


def stage_image(item: StageItem) -> tuple[str, Dataset] | None:
    """Write the de-identified image; returns its relative path and the original dataset, or None (declined)."""
    source, _ = _original(item)
    if settings.IMAGING_EXCLUDE_BURNED_IN and str(source.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return None
    staged = deidentify(source, job_secret(item.data_dir))
    relative = f"images/{item.alias}.dcm"
    target = item.data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    staged.save_as(target, enforce_file_format=True)
    return relative, source


@register_stager("vision_language")
def stage_vision_language(item: StageItem) -> dict | None:
    staged = stage_image(item)
    if staged is None:
        return None
    relative, source = staged
    return {"image": relative, "text": _text_redactor(source)(item.text())}


@register_stager("diffusion")
def stage_diffusion(item: StageItem) -> dict | None:
    staged = stage_image(item)
    if staged is None:
        return None
    return {"image": staged[0]}
